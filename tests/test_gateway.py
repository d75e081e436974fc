"""The OpenAI-compatible gateway on the real tritonserver, driven by the official `openai` SDK.

One gateway process (`python -m gateway`, as the pod runs it) per module, in front of the session's
tritonserver on the built CPU repository. Nothing is mocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import ROOT, free_port
from harness.llm_client import GrpcLlmClient
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


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port = free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway", "--repository", str(triton.repository),
                                    "--triton", triton.http, "--port", str(port)], cwd=ROOT, env=dict(os.environ),
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
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


def test_models_lists_the_built_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


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
    ({"n": 2}, "n", "n is not supported by this server: n=2; only one choice (n=1) is generated per request"),
    ({"logprobs": True}, "logprobs",
     "logprobs is not supported by this server: log probabilities are not returned by the Triton models"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools",
     "tools is not supported by this server: tool calling is not implemented"),
    ({"temperature": 3}, "temperature", "temperature 3 is out of range: it must be between 0 and 2"),
    ({"top_p": 1.5}, "top_p", "top_p 1.5 is out of range: it must be between 0 and 1"),
    ({"max_tokens": 0}, "max_tokens", "max_tokens must be at least 1, got 0"),
    ({"max_tokens": 5000}, "max_tokens", "max_tokens 5000 is above this deployment's limit of 1024 (max_output_len)"),
    ({"extra_body": {"temperature": "hot"}}, "temperature", "temperature must be a number, got 'hot'"),
    ({"extra_body": {"seed": -1}}, "seed",
     "seed -1 is out of range: TensorRT-LLM accepts seed >= 0 and seed <= 18446744073709551615, a whole number"),
    ({"extra_body": {"beam_search": True}}, "beam_search", "Unrecognized request argument supplied: beam_search"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "stop has 5 sequences; at most 4 are allowed"),
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
