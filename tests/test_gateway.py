"""The OpenAI-compatible gateway on the real tritonserver, driven by the official `openai` SDK and by
the literal bodies other clients send (tests/fixtures/clients/, each naming its client, version and
source line).

One gateway process (`python -m gateway`, as the pod runs it) per module, in front of the session's
tritonserver on the built CPU repository; a few tests start their own beside it (a Triton that
cannot be reached, one whose queue is full, a model that recommends its sampling). Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from conftest import ROOT, free_port, triton_server
from harness.llm_client import GrpcLlmClient
from prometheus_client.parser import text_string_to_metric_families
from test_cancellation import cancelled_lines, wait_for_cancellation
from transformers import AutoTokenizer

pytestmark = pytest.mark.triton

MODEL = "SmolLM2-135M-Instruct"
CAPITAL = "What is the capital of France?"
NON_ASCII = ["Say good morning in Japanese.", "Write two emoji."]
LONG = "Write a very long story about a dragon."


class Gateway:
    def __init__(self, url: str, log: Path):
        self.url, self.log = url, log

    def client(self, **options) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, **options)


@contextmanager
def running_gateway(repository: Path, triton_http: str, folder: Path, ready: str = "/health/ready",
                    options: tuple[str, ...] = ()) -> Iterator[Gateway]:
    """`python -m gateway` as the pod runs it, once `ready` answers 200 (/health/live: Triton may be absent)."""
    port = free_port()
    log = folder / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway", "--repository", str(repository),
                                    "--triton", triton_http, "--port", str(port), *options], cwd=ROOT,
                                   env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}{ready}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the gateway was not ready in 60 s:\n{log.read_text()}"
            time.sleep(0.2)
        yield Gateway(url, log)
    finally:
        process.terminate()
        process.wait(30)
    # uvicorn shuts down gracefully on SIGTERM, then exits by that signal
    assert process.returncode in (0, -15) and "Finished server process" in log.read_text(), log.read_text()[-3000:]


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples `name` with these labels (0 where none) in one scrape of the gateway's /metrics."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain"), response.text
    return sum(sample.value for family in text_string_to_metric_families(response.text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(triton.repository, triton.http, tmp_path_factory.mktemp("gateway")) as running:
        yield running


@pytest.fixture(scope="module")
def client(gateway) -> Iterator[openai.OpenAI]:
    with gateway.client() as each:
        yield each


@pytest.fixture(scope="module")
def tokenizer(triton):
    return AutoTokenizer.from_pretrained(triton.repository / "ensemble" / "1" / "tokenizer")


def chat(client: openai.OpenAI, content: str, **options):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **options)


def streamed_chat(client: openai.OpenAI, content: str, **options) -> tuple[str, list]:
    chunks = list(chat(client, content, stream=True, **options))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_models_lists_the_built_model_with_its_context_length(triton, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL
    limits = json.loads((triton.repository / "build.json").read_text())["limits"]
    assert card.model_extra["max_model_len"] == limits["max_seq_len"] == 2048


def test_greedy_chat_equals_the_triton_ensemble(triton, client, tokenizer):
    answer = chat(client, CAPITAL, max_tokens=16, temperature=0)
    ensemble = GrpcLlmClient(triton.grpc)
    try:
        expected = ensemble.send({"text_input": CAPITAL, "max_tokens": 16})
    finally:
        ensemble.close()
    assert expected.error is None, expected.error
    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].message.role == "assistant"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": CAPITAL}], add_generation_prompt=True,
                                           tokenize=True, return_dict=True)["input_ids"]
    assert answer.usage.prompt_tokens == len(prompt)
    assert 0 < answer.usage.completion_tokens <= 16
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


@pytest.mark.parametrize("content", NON_ASCII)
def test_streamed_chat_equals_non_streamed_on_non_ascii_answers(client, content):
    whole = chat(client, content, max_tokens=12, temperature=0)
    text, chunks = streamed_chat(client, content, max_tokens=12, temperature=0,
                                 stream_options={"include_usage": True})
    assert text == whole.choices[0].message.content
    assert any(ord(c) > 127 for c in text), text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    # include_usage: the last chunk has no choices and the usage; every other chunk "usage": null
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_length_and_max_completion_tokens(client):
    answer = chat(client, LONG, max_completion_tokens=5, temperature=0)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 5
    text, chunks = streamed_chat(client, LONG, max_tokens=5, temperature=0)
    assert text == answer.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage is None


def test_a_whole_answer_ends_with_stop(client):
    answer = chat(client, CAPITAL, max_tokens=64, temperature=0)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens < 64


def test_system_and_assistant_turns_go_through_the_chat_template(client, tokenizer):
    messages = [{"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": [{"type": "text", "text": "Another one."}]}]
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    flat = [{**m, "content": m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]}
            for m in messages]
    ids = tokenizer.apply_chat_template(flat, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert answer.usage.prompt_tokens == len(ids["input_ids"])


def test_completions_stop_sequence_is_cut_and_not_sent(client):
    prompt = "The capital of France is"
    free = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0).choices[0]
    assert "." in free.text, free.text
    stopped = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stop=["."])
    assert stopped.choices[0].text == free.text.split(".")[0]
    assert stopped.choices[0].finish_reason == "stop"
    pieces = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stop=["."],
                                            stream=True))
    assert "".join(p.choices[0].text for p in pieces) == stopped.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_sampling_parameters_are_taken(client):
    options = {"max_tokens": 8, "temperature": 0.9, "top_p": 0.95, "seed": 7, "presence_penalty": 0.5,
               "frequency_penalty": 0.5}
    first = chat(client, "Tell me a joke.", **options).choices[0].message.content
    again = chat(client, "Tell me a joke.", **options).choices[0].message.content
    assert first == again


def expect_error(call, status: int, param: str | None, message: str) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        call()
    assert raised.value.status_code == status
    error = raised.value.body
    assert error["param"] == param and error["message"] == message, error
    assert set(error) == {"message", "type", "param", "code"}


BAD_CHATS = [
    ({"n": 9}, "n", "n 9 is more than this deployment's max_batch_size 8: each answer is a sequence of the "
     "engine's batch"),
    ({"logit_bias": {"1": 5}}, "logit_bias",
     "logit_bias is not supported by this server: TensorRT-LLM's backend takes no per-token bias"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
     "tools[0].function.parameters", "tools[0].function.parameters is not a valid JSON schema: 'objekt' is not "
     "valid under any of the given schemas"),
    ({"temperature": 3}, "temperature", "temperature 3 is out of range: it must be between 0 and 2"),
    ({"top_p": 1.5}, "top_p", "top_p 1.5 is out of range: it must be between 0 and 1"),
    ({"max_tokens": 0}, "max_tokens", "max_tokens must be at least 1, got 0"),
    ({"max_tokens": 5000}, "max_tokens", "max_tokens 5000 is above this deployment's limit of 1024 (max_output_len)"),
    ({"extra_body": {"temperature": "hot"}}, "temperature", "temperature must be a number, got 'hot'"),
    ({"extra_body": {"seed": -1}}, "seed",
     "seed -1 is out of range: TensorRT-LLM accepts seed >= 0 and seed <= 18446744073709551615, a whole number"),
    ({"extra_body": {"beam_search": True}}, "beam_search", "Unrecognized request argument supplied: beam_search"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "stop has 5 sequences; at most 4 are allowed"),
    ({"tool_choice": "required"}, "tool_choice", "tool_choice is only allowed when tools are specified"),
    # An extension no runtime here can carry is refused, not dropped: the answer would not be what was asked.
    ({"extra_body": {"min_p": 0.1}}, "min_p", "min_p is not supported by this server: no TensorRT-LLM model here "
     "takes min_p (the C++ backend's tensorrt_llm and the llmapi model have no such input)"),
    ({"extra_body": {"top_k": -3}}, "top_k",
     "top_k -3 is out of range: -1 or 0 (every token) or a number of tokens up to 2147483647"),
    ({"max_tokens": 4, "extra_body": {"min_tokens": 5}}, "min_tokens", "min_tokens 5 is above max_tokens 4"),
    ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty",
     "repetition_penalty 0.0 is out of range: TensorRT-LLM accepts repetition_penalty > 0"),
    ({"extra_body": {"stop_token_ids": [49152]}}, "stop_token_ids",
     "stop_token_ids [49152] are not token ids of this model (0 to 49151)"),
    ({"extra_body": {"ignore_eos": "yes"}}, "ignore_eos", "ignore_eos must be a boolean, got 'yes'"),
    ({"stream": True, "stream_options": {"include_usage": True, "per_chunk": True}}, "stream_options.per_chunk",
     "Unrecognized stream option supplied: per_chunk; this server takes continuous_usage_stats, "
     "include_obfuscation, include_usage"),
]


@pytest.mark.parametrize(("options", "param", "message"), BAD_CHATS, ids=[b[1] for b in BAD_CHATS])
def test_bad_chat_requests_are_refused_by_name(client, options, param, message):
    expect_error(lambda: chat(client, CAPITAL, **options), 400, param, message)


def test_bad_requests_leave_the_gateway_healthy(gateway, client):
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    expect_error(lambda: client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": image}]),
                 400, "messages[0].content[0]",
                 "messages[0].content[0] is not supported by this server: content of type 'image_url'; "
                 "this model reads text only")
    expect_error(lambda: client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}]),
                 404, "model", f"The model `gpt-4o` does not exist; this server serves `{MODEL}`")
    expect_error(lambda: client.completions.create(model=MODEL, prompt="word " * 2000, max_tokens=4), 400, "prompt",
                 "This model's maximum prompt length is 1024 tokens (max_input_len). However, your prompt resulted "
                 "in 2001 tokens. Please reduce its length.")
    for body in (b"{not json", b"[1, 2]", "{\"model\": \"\u00e9\"".encode("latin-1")):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", content=body,
                              headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{gateway.url}/health/ready").json() == {"status": "ready"}
    assert chat(client, CAPITAL, max_tokens=4, temperature=0).choices[0].message.content


def test_a_client_that_goes_away_mid_stream_cancels_the_triton_request(triton, client):
    before = len(cancelled_lines(triton))
    with chat(client, LONG, max_tokens=1000, temperature=0, stream=True) as stream:
        for _, _chunk in zip(range(4), stream, strict=False):
            pass
    tokens = wait_for_cancellation(triton, before)
    assert tokens < 100, f"the cancelled sequence decoded {tokens} tokens"


def test_a_client_that_times_out_on_a_whole_answer_cancels_the_triton_request(triton, gateway):
    before = len(cancelled_lines(triton))
    with gateway.client(timeout=2.0) as impatient, pytest.raises(openai.APITimeoutError):
        chat(impatient, LONG, max_tokens=1000, temperature=0)
    tokens = wait_for_cancellation(triton, before)
    assert tokens < 100, f"the cancelled sequence decoded {tokens} tokens"


# Sampling recommendations of the kind released models ship in generation_config.json.
RECOMMENDED = {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.05, "max_new_tokens": 50}


@pytest.fixture(scope="module")
def recommending(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway in front of the same Triton, over a copy of what it reads from the build whose
    generation_config.json recommends RECOMMENDED."""
    folder = tmp_path_factory.mktemp("recommending")
    copy = folder / "repository"
    for name in ("build.json", "ensemble/config.pbtxt", "preprocessing/config.pbtxt"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(triton.repository / name, copy / name)
    shutil.copytree(triton.repository / "ensemble/1/tokenizer", copy / "ensemble/1/tokenizer")
    config = copy / "ensemble/1/tokenizer/generation_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **RECOMMENDED}))
    with running_gateway(copy, triton.http, folder) as running:
        yield running


# What clients send: each fixture is the literal body one client sends by default (or with the flag
# its docs give), naming the client, its version and the source lines it copies. They go to the
# gateway whose model recommends its sampling: the LangChain and AutoGen bodies name no max_tokens,
# and the embedded 135M model sampled at OpenAI's default temperature 1 rambles on to max_output_len
# (1024 tokens: minutes on this CPU), where with a model's recommendations it answers.
CLIENT_BODIES = sorted((ROOT / "tests" / "fixtures" / "clients").glob("*.json"))
# Default bodies this server refuses, and the 400 that names why: a feature it does not have
# (lm-eval's loglikelihood tasks need log probabilities of the prompt, echoed), or a prompt this build
# cannot take: open-webui's 28 built-in tools come to ~6,000 tokens of prompt, past the embedded model's
# CPU build (max_input_len 1024; SmolLM2-135M's whole context is 8192).
REFUSED = {
    "lm-eval-0.4.13-local-completions-loglikelihood":
        ("echo", "echo is not supported by this server: the prompt is not echoed"),
    "open-webui-0.12.4-chat-builtin-tools":
        ("messages", re.compile(r"This model's maximum prompt length is 1024 tokens \(max_input_len\)\. However, "
                                r"your messages with the 28 tools offered resulted in \d+ tokens\. Please reduce its "
                                r"length\.")),
}


def streamed_answer(response: httpx.Response, chat: bool, options: dict) -> tuple[str, str, dict | None]:
    """(text, finish_reason, usage) of a server-sent event stream, checked as a strict client reads it."""
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""], events[-3:]
    chunks = [json.loads(each.removeprefix("data: ")) for each in events[:-2]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk" if chat else "text_completion"}
    answering = [c for c in chunks if c["choices"]]
    if chat:
        assert answering[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join((c["choices"][0]["delta"].get("content") or "") if chat else c["choices"][0]["text"]
                   for c in answering)
    used = None
    if options.get("include_usage"):
        assert chunks[-1]["choices"] == [], chunks[-1]
        used = chunks[-1]["usage"]
        if options.get("continuous_usage_stats"):
            running = [c["usage"]["completion_tokens"] for c in answering]
            assert running == sorted(running) and running[-1] == used["completion_tokens"], running
        else:
            assert all(c["usage"] is None for c in answering)
    return text, answering[-1]["choices"][0]["finish_reason"], used


@pytest.mark.parametrize("path", CLIENT_BODIES, ids=[p.stem for p in CLIENT_BODIES])
def test_what_each_client_sends_by_default_gets_an_answer_or_a_named_refusal(recommending, path):
    recorded = json.loads(path.read_text())
    assert {"client", "version", "source", "request"} <= set(recorded)
    request = recorded["request"]
    body = request.get("body")
    response = httpx.request(request["method"], recommending.url + request["path"], json=body, timeout=120)
    if path.stem in REFUSED:
        param, message = REFUSED[path.stem]
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
        got = response.json()["error"]["message"]
        assert message.fullmatch(got) if isinstance(message, re.Pattern) else got == message, got
        return
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"]
    if body is None:
        assert response.json() == {"status": "ready"}
        return
    chat = request["path"] == "/v1/chat/completions"
    if body.get("stream"):
        text, finish, used = streamed_answer(response, chat, body.get("stream_options") or {})
    else:
        answer = response.json()
        assert answer["object"] == ("chat.completion" if chat else "text_completion")
        choice = answer["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        finish, used = choice["finish_reason"], answer["usage"]
    assert text.strip() and finish in ("stop", "length"), (text, finish)
    wanted = body.get("max_completion_tokens") or body.get("max_tokens")
    if used is not None:
        assert 0 < used["completion_tokens"] <= (wanted or RECOMMENDED["max_new_tokens"])
        assert used["total_tokens"] == used["prompt_tokens"] + used["completion_tokens"]
    if body.get("ignore_eos"):  # what a benchmark relies on: exactly the output length it asked for
        assert used is not None and used["completion_tokens"] == wanted and finish == "length", used


def test_ignore_eos_runs_to_max_tokens(client):
    free = chat(client, CAPITAL, max_tokens=48, temperature=0)
    assert free.choices[0].finish_reason == "stop" and free.usage.completion_tokens < 48
    held = chat(client, CAPITAL, max_tokens=48, temperature=0, extra_body={"ignore_eos": True})
    assert held.choices[0].finish_reason == "length" and held.usage.completion_tokens == 48
    assert held.choices[0].message.content.startswith(free.choices[0].message.content)
    text, chunks = streamed_chat(client, CAPITAL, max_tokens=48, temperature=0, extra_body={"ignore_eos": True},
                                 stream_options={"include_usage": True})
    assert text == held.choices[0].message.content and chunks[-1].usage == held.usage


def test_min_tokens_holds_the_end_back(client):
    answer = chat(client, CAPITAL, max_tokens=64, temperature=0, extra_body={"min_tokens": 20})
    assert answer.usage.completion_tokens >= 20, answer.choices[0].message.content


def test_stop_token_ids_end_the_answer_before_that_token(client, tokenizer):
    free = chat(client, CAPITAL, max_tokens=16, temperature=0).choices[0].message.content
    assert " Paris" in free, free
    paris = tokenizer.encode(" Paris", add_special_tokens=False)
    assert len(paris) == 1
    stopped = chat(client, CAPITAL, max_tokens=16, temperature=0, extra_body={"stop_token_ids": paris})
    assert stopped.choices[0].message.content == free.split(" Paris")[0]
    assert stopped.choices[0].finish_reason == "stop"
    text, chunks = streamed_chat(client, CAPITAL, max_tokens=16, temperature=0, extra_body={"stop_token_ids": paris})
    assert text == stopped.choices[0].message.content and chunks[-1].choices[0].finish_reason == "stop"


def test_top_k_and_repetition_penalty_reach_the_engine_and_neutral_values_change_nothing(client):
    greedy = chat(client, LONG, max_tokens=24, temperature=0).choices[0].message.content
    hot_top_1 = chat(client, LONG, max_tokens=24, temperature=1.5, seed=3, extra_body={"top_k": 1})
    assert hot_top_1.choices[0].message.content == greedy
    penalised = chat(client, LONG, max_tokens=24, temperature=0, extra_body={"repetition_penalty": 1.3})
    assert penalised.choices[0].message.content != greedy
    neutral = {"top_k": -1, "repetition_penalty": 1.0, "min_tokens": 0, "ignore_eos": False, "min_p": 0,
               "stop_token_ids": []}
    assert chat(client, LONG, max_tokens=24, temperature=0, extra_body=neutral).choices[0].message.content == greedy


def test_message_names_and_keys_that_change_nothing_are_accepted(client):
    plain = chat(client, CAPITAL, max_tokens=8, temperature=0)
    named = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": CAPITAL, "name": "alice"}], max_tokens=8, temperature=0,
        user="u-1", store=False, metadata={"run": "1"}, service_tier="auto", parallel_tool_calls=False,
        logprobs=False, tool_choice="none", response_format={"type": "text"},
        extra_body={"prompt_cache_key": "k", "safety_identifier": "s", "top_logprobs": 0})
    assert named.choices[0].message.content == plain.choices[0].message.content
    # SmolLM2's template names no speakers, so the name leaves the prompt as it was
    assert named.usage.prompt_tokens == plain.usage.prompt_tokens
    expect_error(lambda: client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi",
                                                                                "name": 7}]),
                 400, "messages[0].name", "messages[0].name must be a string, got 7")


def test_continuous_usage_stats_put_the_usage_so_far_on_every_chunk(client):
    whole = chat(client, CAPITAL, max_tokens=12, temperature=0)
    text, chunks = streamed_chat(client, CAPITAL, max_tokens=12, temperature=0,
                                 stream_options={"include_usage": True, "continuous_usage_stats": True})
    assert text == whole.choices[0].message.content
    counts = [c.usage.completion_tokens for c in chunks]
    assert counts[0] == 1 and counts == sorted(counts) and counts[-1] == whole.usage.completion_tokens, counts
    assert {c.usage.prompt_tokens for c in chunks} == {whole.usage.prompt_tokens}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_the_models_recommended_sampling_fills_in_what_a_client_leaves_out(client, recommending):
    """As vLLM does by default: generation_config.json's temperature, top_p, top_k, repetition_penalty
    and max_new_tokens stand for what a request omits; what it sends stands."""
    recommended = {key: value for key, value in RECOMMENDED.items() if key != "max_new_tokens"}
    spelled_out = chat(client, LONG, seed=5, max_tokens=RECOMMENDED["max_new_tokens"],
                       temperature=recommended.pop("temperature"), top_p=recommended.pop("top_p"),
                       extra_body=recommended)
    with recommending.client() as sdk:
        left_out = chat(sdk, LONG, seed=5)
        assert left_out.choices[0].message.content == spelled_out.choices[0].message.content
        assert left_out.usage.completion_tokens == RECOMMENDED["max_new_tokens"]
        assert left_out.choices[0].finish_reason == "length"
        greedy = chat(sdk, LONG, max_tokens=60, temperature=0, extra_body={"top_k": 0, "repetition_penalty": 1})
        plain = chat(client, LONG, max_tokens=60, temperature=0)
        assert greedy.usage.completion_tokens == 60
        assert greedy.choices[0].message.content == plain.choices[0].message.content


# Honest streams: the status line goes with the first token, so what fails before it is a status.

def test_health_and_a_request_id_on_every_response(gateway, client):
    health = httpx.get(f"{gateway.url}/health")
    assert health.status_code == 200 and health.json() == {"status": "ready"}
    generated = health.headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert httpx.get(f"{gateway.url}/health").headers["x-request-id"] != generated
    answer = chat(client, CAPITAL, max_tokens=4, temperature=0, extra_headers={"x-request-id": "bench-42"})
    assert answer._request_id == "bench-42"
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": CAPITAL}], max_tokens=4, stream=True,
        extra_headers={"x-request-id": "bench-43"})
    assert raw.headers["x-request-id"] == "bench-43"
    assert list(raw.parse())
    with pytest.raises(openai.BadRequestError) as refused:
        chat(client, CAPITAL, temperature=9, extra_headers={"x-request-id": "bench-44"})
    assert refused.value.request_id == "bench-44"


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(4096)
        assert more, f"the gateway closed the connection: {data!r}"
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(4096)
    return head


def test_an_idle_connection_outlives_uvicorns_default_keep_alive(gateway):
    """The load balancer reuses a backend connection for up to 600 s; uvicorn would close it after 5."""
    host, port = gateway.url.removeprefix("http://").split(":")
    request = b"GET /health/live HTTP/1.1\r\nHost: gateway\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6.5)
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200")


# A prompt near max_input_len, so that on the CPU the first token comes noticeably after the request.
SLOW_PROMPT = "Here is a list of things dragons like: gold, caves, fire, mountains, sheep. " * 50


def test_a_streams_first_chunk_comes_with_the_first_token(client, tokenizer):
    assert 800 < len(tokenizer.encode(SLOW_PROMPT)) < 1000
    began = time.monotonic()
    arrivals = []
    with chat(client, SLOW_PROMPT, max_tokens=4, temperature=0, stream=True) as stream:
        for chunk in stream:
            arrivals.append((time.monotonic() - began, chunk))
    role_at = arrivals[0][0]
    assert arrivals[0][1].choices[0].delta.role == "assistant"
    content_at = next(at for at, chunk in arrivals if chunk.choices and chunk.choices[0].delta.content)
    # The first token is late (the prompt's prefill): the role chunk, the first that has `choices`
    # (where vLLM's benchmark stops its TTFT clock), waits for it.
    assert content_at > 0.2 and role_at > 0.8 * content_at, [round(at, 3) for at, _ in arrivals]


def test_a_client_that_gives_up_before_the_first_token_cancels_the_triton_request(triton, gateway):
    before = len(cancelled_lines(triton))
    # The status line waits for the first token, after SLOW_PROMPT's prefill (test above): 0.1 s runs out first.
    with gateway.client(timeout=0.1) as impatient, pytest.raises(openai.APITimeoutError):
        chat(impatient, SLOW_PROMPT, max_tokens=1000, temperature=0, stream=True)
    # The model logs the cancellation once the request is in its batch, after that prefill: on a loaded
    # 2-core machine that alone can take longer than wait_for_cancellation's default 10 s.
    tokens = wait_for_cancellation(triton, before, timeout=60)
    assert tokens < 100, f"the cancelled sequence decoded {tokens} tokens"


def test_a_triton_that_cannot_be_reached_is_a_503_with_retry_after(triton, tmp_path):
    with running_gateway(triton.repository, f"127.0.0.1:{free_port()}", tmp_path, ready="/health/live") as down:
        health = httpx.get(f"{down.url}/health")
        assert health.status_code == 503 and health.headers["retry-after"] == "10"
        with down.client() as sdk:
            for stream in (True, False):
                with pytest.raises(openai.APIStatusError) as raised:
                    chat(sdk, CAPITAL, max_tokens=4, stream=stream)
                assert raised.value.status_code == 503, stream
                assert raised.value.response.headers["retry-after"] == "10"
                assert raised.value.body["code"] == "triton_unavailable"


@pytest.fixture(scope="module")
def full_triton(triton, tmp_path_factory: pytest.TempPathFactory):
    """A second tritonserver on this build whose tensorrt_llm queue holds one request: beyond the
    running batch (8 rows) and that one, Triton answers 503 "Exceeds maximum queue size"."""
    folder = tmp_path_factory.mktemp("full-triton")
    copy = folder / "repository"
    shutil.copytree(triton.repository, copy, ignore=shutil.ignore_patterns("checkpoint"))
    (copy / "tensorrt_llm/1/checkpoint").symlink_to(triton.repository / "tensorrt_llm/1/checkpoint")
    config = copy / "tensorrt_llm/config.pbtxt"
    assert "dynamic_batching {" in config.read_text()
    config.write_text(config.read_text().replace(
        "dynamic_batching {", "dynamic_batching {\n  default_queue_policy { max_queue_size: 1 }", 1))
    with triton_server(copy, folder) as server:
        yield server


def test_a_full_triton_is_a_503_with_retry_after_never_a_broken_stream(full_triton, tmp_path):
    outcomes: list[tuple] = []

    def one(sdk: openai.OpenAI) -> None:
        try:
            text, _ = streamed_chat(sdk, LONG, max_tokens=48, temperature=0)
            outcomes.append(("answered", bool(text)))
        except openai.APIStatusError as error:
            outcomes.append((error.status_code, error.response.headers.get("retry-after"), error.body["code"]))

    with running_gateway(full_triton.repository, full_triton.http, tmp_path) as full, full.client() as sdk:
        threads = [threading.Thread(target=one, args=(sdk,)) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert len(outcomes) == 12, outcomes  # an error inside a 200 stream would have ended a thread unrecorded
    assert ("answered", True) in outcomes
    assert set(outcomes) == {("answered", True), (503, "1", "triton_unavailable")}, outcomes


# Admission (gateway/admission.py): what is refused before any work, through the real gateway and Triton.

def test_overload_is_a_fast_429_never_a_hang_and_the_next_request_works(triton, tmp_path):
    outcomes: list[tuple] = []

    def one(sdk: openai.OpenAI) -> None:
        started = time.monotonic()
        try:
            text, _ = streamed_chat(sdk, LONG, max_tokens=48, temperature=0)
            outcomes.append(("answered", bool(text)))
        except openai.APIStatusError as error:
            outcomes.append((error.status_code, error.response.headers.get("retry-after"), error.body["code"],
                             time.monotonic() - started < 1.0))

    with running_gateway(triton.repository, triton.http, tmp_path, options=("--max-in-flight", "2")) as bounded, \
            bounded.client(timeout=60) as sdk:
        threads = [threading.Thread(target=one, args=(sdk,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert len(outcomes) == 8, outcomes  # a thread still waiting is a hang
        assert outcomes.count(("answered", True)) >= 2, outcomes
        assert set(outcomes) == {("answered", True), (429, "1", "rate_limit_exceeded", True)}, outcomes
        assert httpx.get(f"{bounded.url}/health").status_code == 200
        assert chat(sdk, CAPITAL, max_tokens=4, temperature=0).choices[0].message.content


def test_a_body_over_the_cap_is_a_413(gateway):
    body = {"model": MODEL, "prompt": "x" * (1 << 20)}
    answer = httpx.post(f"{gateway.url}/v1/completions", json=body, timeout=30)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "request_too_large"


def test_a_prompt_over_the_character_bound_is_refused_before_tokenizing(client, tokenizer):
    # 90,000 characters: no SmolLM2 token holds more than 81 (the longest: a newline and 80 spaces), so
    # these are over 1,024 tokens whatever they say, and the gateway need not tokenize them to know.
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=MODEL, prompt="word " * 18_000, max_tokens=1)
    assert raised.value.body["code"] == "context_length_exceeded" and raised.value.body["param"] == "prompt"
    assert "90000 characters" in raised.value.body["message"]
    # Under the character bound and over the token bound: the tokenizer counts, and says how many tokens.
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, "word " * 2_000, max_tokens=1)
    assert raised.value.body["code"] == "context_length_exceeded" and raised.value.body["param"] == "messages"
    assert "tokens. Please reduce" in raised.value.body["message"]


def test_api_keys_401_in_openais_shape_and_a_valid_key_works_with_the_sdk(triton, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "benchmarks").write_text("sk-bench-0123456789\n")
    with running_gateway(triton.repository, triton.http, tmp_path, options=("--api-keys-dir", str(keys))) as keyed:
        assert httpx.get(f"{keyed.url}/health").status_code == 200  # probes and the LB carry no key
        missing = httpx.post(f"{keyed.url}/v1/chat/completions", json={"model": MODEL})
        assert missing.status_code == 401 and missing.json() == {"error": {
            "message": missing.json()["error"]["message"], "type": "invalid_request_error", "param": None,
            "code": "invalid_api_key"}}
        with openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="sk-wrong", max_retries=0) as wrong, \
                pytest.raises(openai.AuthenticationError) as raised:
            chat(wrong, CAPITAL, max_tokens=4)
        assert raised.value.status_code == 401 and raised.value.body["code"] == "invalid_api_key"
        with openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="sk-bench-0123456789", max_retries=0) as right:
            assert [m.id for m in right.models.list().data] == [MODEL]
            text, _ = streamed_chat(right, CAPITAL, max_tokens=8, temperature=0)
            assert text


def test_one_worker_serves_its_metrics_from_its_own_memory(gateway, client):
    """`python -m gateway` with one worker and no PROMETHEUS_MULTIPROC_DIR: the values live in the process
    (tests/test_gateway_metrics.py runs several workers, which share theirs through files)."""
    chat_route = {"route": "/v1/chat/completions", "api_key": "anonymous"}
    before = metric(gateway.url, "gateway_requests_total", status="200", **chat_route)
    first = metric(gateway.url, "gateway_time_to_first_token_seconds_count", api_key="anonymous")
    text, _ = streamed_chat(client, CAPITAL, max_tokens=4, temperature=0)
    assert text
    assert metric(gateway.url, "gateway_requests_total", status="200", **chat_route) == before + 1
    assert metric(gateway.url, "gateway_time_to_first_token_seconds_count", api_key="anonymous") == first + 1
    assert metric(gateway.url, "gateway_requests_in_flight", api_key="anonymous") == 0
    assert metric(gateway.url, "gateway_requests_in_flight_limit") == 16  # 2 x max_batch_size 8, one worker

