"""The CPU build of the default model, served by the real tritonserver, used through tritonclient."""

from __future__ import annotations

import concurrent.futures
import json

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as httpclient
from harness.llm_client import GrpcLlmClient, http_generate, http_generate_stream
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.triton

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the ocean.",
    "What is 2 + 2?",
]


@pytest.fixture(scope="module")
def grpc(triton):
    client = GrpcLlmClient(triton.grpc)
    yield client
    client.close()


@pytest.fixture(scope="module")
def reference(triton):
    """transformers on the very weights the server loaded, and the tokenizer with its chat template."""
    version_dir = triton.repository / "tensorrt_llm" / "1"
    model = AutoModelForCausalLM.from_pretrained(version_dir / "checkpoint", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(triton.repository / "preprocessing" / "1" / "tokenizer")
    return model, tokenizer


def chat_ids(tokenizer, prompt: str) -> list[int]:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"])


def transformers_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([chat_ids(tokenizer, prompt)])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    generated = out[0, ids.shape[1]:].tolist()
    return generated[:-1] if generated and generated[-1] == tokenizer.eos_token_id else generated


def direct_ids(triton, tokenizer, prompt: str, max_tokens: int, **extra) -> list[int]:
    """Ask the tensorrt_llm model itself, with the token ids the preprocessing would send."""
    client = GrpcLlmClient(triton.grpc, model="tensorrt_llm")
    try:
        ids = chat_ids(tokenizer, prompt)
        answer = client.send({"input_ids": np.array([ids], dtype=np.int32),
                              "input_lengths": np.array([[len(ids)]], dtype=np.int32),
                              "request_output_len": np.array([[max_tokens]], dtype=np.int32),
                              "end_id": np.array([[tokenizer.eos_token_id]], dtype=np.int32), **extra},
                             output="output_ids")
    finally:
        client.close()
    assert answer.error is None, answer.error
    return [int(t) for piece in answer.pieces for t in piece.reshape(-1)]


def test_greedy_matches_transformers_generate_token_for_token(triton, reference, grpc):
    model, tokenizer = reference
    for prompt in PROMPTS[:2]:
        expected = transformers_greedy(model, tokenizer, prompt, 24)
        assert direct_ids(triton, tokenizer, prompt, 24) == expected
        answer = grpc.send({"text_input": prompt, "max_tokens": 24})
        assert answer.error is None
        assert answer.text == tokenizer.decode(expected, skip_special_tokens=True)


def test_batched_requests_answer_as_if_alone(triton, grpc):
    alone = {p: grpc.send({"text_input": p, "max_tokens": 20}).text for p in PROMPTS}
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: http_generate(triton.http, {"text_input": p, "max_tokens": 20}), PROMPTS))
    assert [body["text_output"] for _, body in together] == [alone[p] for p in PROMPTS]
    # one request carrying a batch of prompts gets the same answers, in order
    batch = grpc.send({"text_input": np.array([[p] for p in PROMPTS], dtype=object),
                       "max_tokens": np.full((len(PROMPTS), 1), 20, dtype=np.int32)})
    assert batch.error is None
    assert batch.rows == [alone[p] for p in PROMPTS]


def test_max_tokens_end_id_and_stop_words_are_honoured(triton, reference, grpc):
    _, tokenizer = reference
    prompt = "List the days of the week."
    full = direct_ids(triton, tokenizer, prompt, 40)
    assert len(full) == 40
    assert direct_ids(triton, tokenizer, prompt, 5) == full[:5]
    assert grpc.send({"text_input": prompt, "max_tokens": 5}).text == tokenizer.decode(full[:5])
    # end_id: the fourth generated token, sent as the end token, ends the answer before it
    end_id = full[3]
    cut = full[:full.index(end_id)]
    text = grpc.send({"text_input": prompt, "max_tokens": 40, "end_id": end_id}).text
    assert text == tokenizer.decode(cut, skip_special_tokens=True)
    # stop_words: generation stops right after the stop word, which is kept, as TensorRT-LLM does
    full_text = tokenizer.decode(full, skip_special_tokens=True)
    assert " Wednesday" in full_text
    stopped = grpc.send({"text_input": prompt, "max_tokens": 40, "stop_words": [" Wednesday"]}).text
    assert stopped.endswith("Wednesday") and full_text.startswith(stopped) and len(stopped) < len(full_text)


def test_exclude_input_in_output_false_puts_the_prompt_before_a_non_streamed_answer(triton, reference, grpc):
    """As NVIDIA's ensemble answers it; ours streams from tensorrt_llm, which never sends the prompt in a
    stream, so the ensemble puts it there."""
    _, tokenizer = reference
    prompt = "Name a colour."
    answer = direct_ids(triton, tokenizer, prompt, 8)
    request = {"text_input": prompt, "max_tokens": 8, "exclude_input_in_output": False}
    whole = grpc.send(request)
    assert whole.error is None
    assert whole.text == tokenizer.decode(chat_ids(tokenizer, prompt) + answer, skip_special_tokens=True)
    assert grpc.send({**request, "stream": True}).text == tokenizer.decode(answer, skip_special_tokens=True)


def statistics(triton, model: str) -> dict:
    client = httpclient.InferenceServerClient(triton.http)
    stats = client.get_inference_statistics(model)["model_stats"][0]
    client.close()
    return stats


def test_eight_concurrent_requests_get_their_own_answers_and_are_batched(triton, grpc):
    prompts = [f"Say the word number {i} in French." for i in range(1, 9)]
    alone = {p: grpc.send({"text_input": p, "max_tokens": 12}).text for p in prompts}
    before = statistics(triton, "tensorrt_llm")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: http_generate(triton.http, {"text_input": p, "max_tokens": 12}), prompts))
    after = statistics(triton, "tensorrt_llm")
    assert [body["text_output"] for _, body in answers] == [alone[p] for p in prompts]
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert inferences == 8
    assert executions < inferences, f"8 requests ran in {executions} executions: not batched"


# Greedy answers of the default model that are mostly multi-byte text; the emoji one is cut by
# max_tokens in the middle of a character, so its whole answer ends in U+FFFD.
MULTIBYTE_PROMPTS = {
    "japanese": "Translate hello into Japanese.",
    "chinese": "写一首关于春天的短诗。",
    "korean": "Say thank you in Korean.",
    "emoji cut mid-character": "Give me a smiley face emoji.",
}


@pytest.mark.parametrize("name", MULTIBYTE_PROMPTS)
def test_streamed_pieces_concatenate_to_the_whole_answer(triton, grpc, reference, name):
    _, tokenizer = reference
    request = {"text_input": MULTIBYTE_PROMPTS[name], "max_tokens": 40}
    whole = grpc.send(request)
    assert whole.error is None and len(whole.pieces) == 1
    streamed = grpc.send({**request, "stream": True})
    sse = http_generate_stream(triton.http, {**request, "stream": True})
    assert streamed.error is None and sse.error is None
    assert len(streamed.pieces) > 3
    assert streamed.text == whole.text
    assert sse.pieces == streamed.pieces
    # the check means something only if some token of the answer is not a whole character alone
    ids = tokenizer.encode(whole.text, add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    # no piece shows a broken character, except where the whole answer itself ends in one
    assert all("\ufffd" not in piece for piece in streamed.pieces[:-1])


def test_sampled_stream_with_a_seed_matches_the_whole_answer(triton, grpc):
    request = {"text_input": "Tell me about the moon.", "max_tokens": 32, "temperature": 1.2, "top_k": 100,
               "top_p": 0.95, "random_seed": 11}
    whole = grpc.send(request).text
    assert grpc.send({**request, "stream": True}).text == whole
    assert grpc.send({**request, "random_seed": 12}).text != whole


def test_health_metadata_and_metrics(triton, grpc):
    client = httpclient.InferenceServerClient(triton.http)
    assert client.is_server_live() and client.is_server_ready()
    for model in ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing"):
        assert client.is_model_ready(model)
    metadata = client.get_model_metadata("ensemble")
    names = {item["name"] for item in metadata["inputs"]}
    assert {"text_input", "max_tokens", "stream", "temperature", "top_k", "top_p", "end_id", "pad_id",
            "stop_words", "bad_words", "random_seed"} <= names
    assert [item["name"] for item in metadata["outputs"]] == ["text_output"]
    config = client.get_model_config("tensorrt_llm")
    assert config["model_transaction_policy"]["decoupled"] is True
    client.close()
    grpc.send({"text_input": "Hello", "max_tokens": 2})
    metrics = requests.get(triton.metrics_url, timeout=10).text
    assert 'nv_inference_request_success{model="ensemble",version="1"}' in metrics
    # the autoscaling signal: a gauge that exists at zero load
    assert 'nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 0' in metrics


BAD_REQUESTS = {
    "empty text": ({"text_input": "", "max_tokens": 8}, "text_input is empty"),
    "max_tokens zero": ({"text_input": "Hi", "max_tokens": 0}, "max_tokens must be at least 1, got 0"),
    "max_tokens negative": ({"text_input": "Hi", "max_tokens": -3}, "max_tokens must be at least 1, got -3"),
    "max_tokens above limit": ({"text_input": "Hi", "max_tokens": 100000},
                               "max_tokens 100000 is above this deployment's limit of 1024"),
    "prompt too long": ({"text_input": "hello " * 3000, "max_tokens": 8},
                        "text_input is 3031 tokens; this deployment accepts at most 1024 (max_input_len)"),
    "not utf-8": ({"text_input": b"caf\xe9 \xff", "max_tokens": 8}, "text_input is not valid UTF-8 (byte 3: b'\\xe9')"),
    # Sampling values TensorRT-LLM refuses, refused by name on every runtime:
    "negative temperature": ({"text_input": "Hi", "max_tokens": 8, "temperature": -1.0},
                             "temperature -1.0 is out of range: TensorRT-LLM accepts temperature >= 0"),
    "top_p above 1": ({"text_input": "Hi", "max_tokens": 8, "top_p": 2.0},
                      "top_p 2.0 is out of range: TensorRT-LLM accepts top_p <= 1 (0 or less means no top-p)"),
    "NaN temperature": ({"text_input": "Hi", "max_tokens": 8, "temperature": float("nan")},
                        "temperature nan is out of range: TensorRT-LLM accepts temperature >= 0"),
    "negative top_k": ({"text_input": "Hi", "max_tokens": 8, "top_k": -3},
                       "top_k -3 is out of range: TensorRT-LLM accepts top_k >= 0 and top_k <= 2147483647"),
    "zero repetition_penalty": ({"text_input": "Hi", "max_tokens": 8, "repetition_penalty": 0.0},
                                "repetition_penalty 0.0 is out of range: TensorRT-LLM accepts repetition_penalty > 0"),
    "negative length_penalty": ({"text_input": "Hi", "max_tokens": 8, "length_penalty": -0.5},
                                "length_penalty -0.5 is out of range: TensorRT-LLM accepts length_penalty >= 0"),
    "negative min_tokens": ({"text_input": "Hi", "max_tokens": 8, "min_tokens": -1},
                            "min_tokens -1 is out of range: TensorRT-LLM accepts min_tokens >= 0"),
    "zero beam_width": ({"text_input": "Hi", "max_tokens": 8, "beam_width": 0},
                        "beam_width 0 is out of range: TensorRT-LLM accepts beam_width >= 1"),
    # Triton itself refuses these before any model runs, in its own words:
    "missing max_tokens": ({"text_input": "Hi"}, "expected number of inputs between 2 and 19 but got 1 inputs for "
                           "model 'ensemble'. Got input(s) ['text_input'], but missing required input(s) "
                           "['max_tokens']. Please provide all required input(s)."),
    "wrong dtype": ({"text_input": "Hi", "max_tokens": np.array([[8.0]], dtype=np.float32)},
                    "inference input 'max_tokens' data-type is 'FP32', but model 'ensemble' expects 'INT32'"),
    "batch over max_batch_size": ({"text_input": np.array([["Hi"]] * 9, dtype=object),
                                   "max_tokens": np.full((9, 1), 4, dtype=np.int32)},
                                  "inference request batch-size must be <= 8 for 'ensemble'"),
    "wrong shape": ({"text_input": np.array([["Hi", "there"]], dtype=object), "max_tokens": 8},
                    "unexpected shape for input 'text_input' for model 'ensemble'. Expected [-1,1], got [1,2]."),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_input_is_refused_by_name_and_the_server_goes_on(triton, grpc, name):
    values, message = BAD_REQUESTS[name]
    if name == "wrong dtype":
        grpc.dtypes = {**grpc.dtypes, "max_tokens": "FP32"}
    try:
        answer = grpc.send(values)
    finally:
        grpc.dtypes["max_tokens"] = "INT32"
    assert answer.error is not None
    assert answer.error.removeprefix("[request id: <id_unknown>] ").startswith(message), answer.error
    client = httpclient.InferenceServerClient(triton.http)
    assert client.is_server_ready()
    client.close()
    assert grpc.send({"text_input": "Say hi.", "max_tokens": 3}).text


def test_unknown_model_and_bad_http_payloads_are_refused(triton):
    status, body = http_generate(triton.http, {"text_input": "Hi", "max_tokens": 4}, model="no_such_model")
    assert status == 404 and "no_such_model" in body["error"]
    with pytest.raises(Exception, match="no_such_model"):
        GrpcLlmClient(triton.grpc, model="no_such_model")
    status, body = http_generate(triton.http, {"text_input": "Hi", "max_tokens": 0})
    assert status == 400 and "max_tokens must be at least 1, got 0" in body["error"]
    status, body = http_generate(triton.http, {"text_input": "Hi", "max_tokens": 4})
    assert status == 200 and body["text_output"]
    assert json.loads(json.dumps(body))["model_name"] == "ensemble"
