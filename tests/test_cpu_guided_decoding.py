"""Structured output, log probabilities and several sequences on the CPU runtime, on the real tritonserver.

tensorrt_llm is called as the gateway calls it (token ids over Triton's HTTP generate_stream), with the
C++ backend's inputs: guided_decoding_guide_type and guided_decoding_guide, return_log_probs,
num_return_sequences; and the CPU runtime's num_top_log_probs. Answers are greedy (runtime_top_k 1),
so each is checked against the model itself.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time

import jsonschema
import pytest
import requests
import torch
from harness.llm_client import http_events
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.triton

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}


def generate(triton, prompt: list[int], tokens: int, end_id: int, **inputs) -> list[dict]:
    """Every response of one greedy request to tensorrt_llm (streamed unless `streaming` says otherwise)."""
    return http_events(triton.http, {"input_ids": prompt, "input_lengths": [len(prompt)],
                                     "request_output_len": [tokens], "end_id": [end_id], "runtime_top_k": [1],
                                     "streaming": [True], **inputs})


def listed(event: dict, name: str) -> list:
    """An output as a flat list: Triton writes a one-element tensor as a bare value."""
    value = event.get(name, [])
    return value if isinstance(value, list) else [value]


def ids_of(events: list[dict], index: int | None = None) -> list[int]:
    return [i for e in events if index is None or e.get("sequence_index") == index for i in listed(e, "output_ids")]


def text(tokenizer, events: list[dict]) -> str:
    assert not any("error" in e for e in events), events
    return tokenizer.decode(ids_of(events), skip_special_tokens=True)


def test_a_json_schema_bound_answer_validates(triton, chat):
    ids, tokenizer = chat
    prompt = ids("Make up a person. Answer in JSON with their name and age.")
    for streaming in (True, False):
        events = generate(triton, prompt, 60, tokenizer.eos_token_id, streaming=[streaming],
                          guided_decoding_guide_type="json_schema", guided_decoding_guide=json.dumps(PERSON))
        jsonschema.validate(json.loads(text(tokenizer, events)), PERSON)


def test_json_object_and_a_regex_are_enforced(triton, chat):
    ids, tokenizer = chat
    answer = text(tokenizer, generate(triton, ids("List three colours."), 60, tokenizer.eos_token_id,
                                      guided_decoding_guide_type="json"))
    json.loads(answer)  # the unconstrained answer to this is prose
    phone = text(tokenizer, generate(triton, ids("What is your phone number?"), 20, tokenizer.eos_token_id,
                                     guided_decoding_guide_type="regex", guided_decoding_guide=r"\d{3}-\d{4}"))
    assert re.fullmatch(r"\d{3}-\d{4}", phone), phone


def test_constrained_and_unconstrained_requests_in_one_batch_are_both_right(triton, chat):
    ids, tokenizer = chat
    free_prompt, bound_prompt = ids("Tell me about the sea."), ids("Describe a person in JSON.")
    alone = ids_of(generate(triton, free_prompt, 16, tokenizer.eos_token_id))
    results: dict[str, tuple[list[dict], float, float]] = {}

    def send(name: str, prompt: list[int], **inputs) -> None:
        began = time.monotonic()
        events = generate(triton, prompt, 40 if inputs else 16, tokenizer.eos_token_id, **inputs)
        results[name] = (events, began, time.monotonic())

    threads = [threading.Thread(target=send, args=("free", free_prompt)),
               threading.Thread(target=send, args=("bound", bound_prompt),
                                kwargs={"guided_decoding_guide_type": "json_schema",
                                        "guided_decoding_guide": json.dumps(PERSON)})]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (free, free_start, free_end), (bound, bound_start, bound_end) = results["free"], results["bound"]
    assert bound_start < free_end and free_start < bound_end  # they were decoded together
    assert ids_of(free) == alone  # greedy, untouched by its neighbour's grammar
    jsonschema.validate(json.loads(text(tokenizer, bound)), PERSON)


@pytest.fixture(scope="module")
def model(triton):
    return AutoModelForCausalLM.from_pretrained(triton.repository / "tensorrt_llm" / "1" / "checkpoint",
                                                dtype=torch.float32).eval()


def test_log_probs_are_the_models_and_add_up(triton, chat, model):
    ids, tokenizer = chat
    prompt = ids("What is the capital of France?")
    events = generate(triton, prompt, 6, tokenizer.eos_token_id, return_log_probs=[True], num_top_log_probs=[5])
    tokens = ids_of(events)
    log_probs = [p for e in events for p in listed(e, "output_log_probs")]
    assert len(tokens) == len(log_probs) == 6 and all(p <= 0 for p in log_probs)
    # each response's cum_log_probs is the sum so far (it ran to its length: no end id to add)
    assert math.isclose(listed(events[-1], "cum_log_probs")[0], sum(log_probs), abs_tol=1e-3)
    for event in events:
        top, top_ids = listed(event, "top_log_probs"), listed(event, "top_log_prob_ids")
        assert len(top) == 5 and top == sorted(top, reverse=True)
        # greedy: the chosen token is the most likely one
        assert top_ids[0] == listed(event, "output_ids")[0] and top[0] == listed(event, "output_log_probs")[0]
    # the first token's log probability is the model's own, over the whole vocabulary
    with torch.inference_mode():
        expected = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1], dim=-1)
    assert math.isclose(log_probs[0], float(expected[tokens[0]]), abs_tol=1e-3)
    whole = generate(triton, prompt, 6, tokenizer.eos_token_id, streaming=[False], return_log_probs=[True])
    assert listed(whole[0], "output_log_probs") == pytest.approx(log_probs, abs=1e-5)


def test_cum_log_probs_count_the_end_id_as_tensorrt_llm_does(triton, chat):
    ids, tokenizer = chat
    events = generate(triton, ids("What is the capital of France?"), 20, tokenizer.eos_token_id,
                      return_log_probs=[True])
    log_probs = [p for e in events for p in listed(e, "output_log_probs")]
    # the end id ended it: a last response with no ids, whose sum has the end id's log probability too
    assert len(log_probs) < 20 and listed(events[-1], "output_ids") == []
    assert listed(events[-2], "cum_log_probs")[0] == pytest.approx(sum(log_probs), abs=1e-3)
    assert listed(events[-1], "cum_log_probs")[0] < listed(events[-2], "cum_log_probs")[0]


def test_two_sequences_for_one_prompt(triton, chat):
    ids, tokenizer = chat
    prompt = ids("Name an animal.")
    sampled = {"runtime_top_k": [0], "runtime_top_p": [0.95], "temperature": [1.0], "seed": [3],
               "num_return_sequences": [2]}
    streamed = generate(triton, prompt, 8, tokenizer.eos_token_id, **sampled)
    whole = generate(triton, prompt, 8, tokenizer.eos_token_id, streaming=[False], **sampled)
    assert sorted(e["sequence_index"] for e in whole) == [0, 1]  # one response per sequence
    # seeded seed + index, as TensorRT-LLM seeds them: the same two answers, streamed or not
    for index in (0, 1):
        answer = next(e for e in whole if e["sequence_index"] == index)
        assert ids_of(streamed, index) == listed(answer, "output_ids")[:listed(answer, "sequence_length")[0]]


@pytest.mark.parametrize(("inputs", "message"), [
    ({"guided_decoding_guide_type": "json_schema", "guided_decoding_guide": '{"type": "nope"}'},
     'guided_decoding_guide is not a valid JSON schema: Unsupported type "nope"'),
    ({"guided_decoding_guide_type": "json_schema", "guided_decoding_guide": "{not json"},
     "guided_decoding_guide is not a valid JSON schema: "),
    ({"guided_decoding_guide_type": "regex", "guided_decoding_guide": "a(b"},
     "guided_decoding_guide is not a valid regular expression: "),
    ({"guided_decoding_guide_type": "xml"},
     "guided_decoding_guide_type 'xml' is not one of json, json_schema, regex, ebnf_grammar"),
    ({"guided_decoding_guide_type": "regex"}, "guided_decoding_guide is required with guided_decoding_guide_type"),
    ({"guided_decoding_guide": "[a-z]+"}, "guided_decoding_guide needs guided_decoding_guide_type"),
    ({"num_top_log_probs": [21]}, "num_top_log_probs must be between 0 and 20"),
    ({"num_return_sequences": [0]}, "num_return_sequences 0 is out of range: TensorRT-LLM accepts"),
])
def test_a_bad_guide_is_refused_by_name_and_the_server_goes_on(triton, chat, inputs, message):
    ids, tokenizer = chat
    prompt = ids("Hello")
    refused = generate(triton, prompt, 4, tokenizer.eos_token_id, **inputs)
    assert len(refused) == 1 and message in refused[0]["error"], refused
    assert requests.get(f"http://{triton.http}/v2/health/ready", timeout=10).status_code == 200
    assert len(ids_of(generate(triton, prompt, 2, tokenizer.eos_token_id))) == 2
