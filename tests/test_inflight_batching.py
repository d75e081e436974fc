"""In-flight batching on the CPU runtime: sequences join and leave a running batch between decode steps.

The decoder is checked against transformers' `generate` on a tiny random model (fast, and any slip in
padding, positions or cache merging changes its greedy tokens); the served model is checked through
the real tritonserver: a request that arrives mid-decode is answered at once, a cancelled one stops.
"""

from __future__ import annotations

import math
import queue
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import xgrammar
from harness.llm_client import GrpcLlmClient
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "model_repository" / "tensorrt_llm" / "cpu" / "1"))
import generation  # noqa: E402
import guided  # noqa: E402
from generation import Decoder, Sequence  # noqa: E402

NO_END = -1  # an end id no token equals, so every answer runs to max_new_tokens


@pytest.fixture(scope="module")
def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         # wide weights: varied greedy tokens, so a slip shows (the default repeats one)
                         initializer_range=0.2)
    return LlamaForCausalLM(config).eval()


def prompt(length: int, seed: int) -> list[int]:
    return torch.randint(3, 256, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def alone(model, ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def sequence(ids: list[int], max_new_tokens: int) -> Sequence:
    return Sequence(prompt=ids, max_new_tokens=max_new_tokens, end_id=NO_END, pad_id=0)


def run(decoder: Decoder, arrivals: dict[int, list[Sequence]], cancel_at: dict[int, Sequence] | None = None,
        ) -> tuple[dict[Sequence, list[int]], list[int]]:
    """Step the decoder, admitting each group at its step (or as soon as no prefill is under way);
    returns the tokens emitted per sequence and the batch size at each step."""
    cancel_at = cancel_at or {}
    emitted: dict[Sequence, list[int]] = {}
    sizes, queue, step = [], [], 0
    while step <= max(arrivals) or queue or decoder.sequences:
        queue += arrivals.get(step, [])
        if queue and decoder.joining is None:
            decoder.admit(queue)
            queue = []
        if step in cancel_at:
            decoder.remove({cancel_at[step]})
        sizes.append(len(decoder.sequences))
        for event in decoder.step():
            emitted.setdefault(event.sequence, []).append(event.token)
        step += 1
    return emitted, sizes


def test_sequences_that_join_and_leave_mid_decode_get_their_greedy_answers_alone(tiny_model):
    lengths = {0: [(7, 20)], 3: [(12, 9), (2, 15)], 5: [(30, 6)], 14: [(5, 12)]}
    arrivals = {step: [sequence(prompt(n, seed=10 * step + i), m) for i, (n, m) in enumerate(group)]
                for step, group in lengths.items()}
    emitted, sizes = run(Decoder(tiny_model, prefill_tokens=1024), arrivals)
    for group in arrivals.values():
        for s in group:
            assert emitted[s] == s.generated == alone(tiny_model, s.prompt, s.max_new_tokens)
    assert max(sizes) == 4, "the late sequences did not decode beside the first"


def test_chunked_prefill_gives_the_same_tokens(tiny_model):
    first = sequence(prompt(9, seed=1), 25)
    late = [sequence(prompt(40, seed=2), 10), sequence(prompt(17, seed=3), 10)]
    emitted, sizes = run(Decoder(tiny_model, prefill_tokens=8), {0: [first], 2: late})
    for s in [first, *late]:
        assert emitted[s] == alone(tiny_model, s.prompt, s.max_new_tokens)
    # 2 prompts of up to 40 tokens in chunks of 4 columns: 10 steps of prefill, while `first` decodes
    assert len(emitted[first]) == 25 and sizes.count(3) >= 10


def test_a_removed_sequence_stops_and_the_rest_are_unchanged(tiny_model):
    keep, doomed = sequence(prompt(6, seed=4), 20), sequence(prompt(11, seed=5), 20)
    emitted, _ = run(Decoder(tiny_model, prefill_tokens=1024), {0: [keep, doomed]}, cancel_at={5: doomed})
    # step 0 gives two tokens (prefill, then the first decode); steps 1-4 one each; step 5 runs without it
    assert len(emitted[doomed]) == 6
    assert emitted[keep] == alone(tiny_model, keep.prompt, 20)


def test_a_constrained_row_follows_its_grammar_and_leaves_the_others_as_they_were(tiny_model):
    # The tiny model's 256 ids as a raw vocabulary: 0-2 special, the rest one character each.
    vocabulary = ["<unk>", "<s>", "</s>", *(chr(i) if 32 <= i < 127 else f"<0x{i:02X}>" for i in range(3, 256))]
    guides = guided.Guides(xgrammar.TokenizerInfo(vocabulary, vocab_size=256, stop_token_ids=[2]), threads=1)
    grammar = guides.compile("regex", "[a-c]{5}")
    free = [sequence(prompt(7, seed=20), 12), sequence(prompt(9, seed=21), 12)]
    bound = Sequence(prompt=prompt(8, seed=22), max_new_tokens=12, end_id=2, pad_id=0,
                     grammar=guided.matcher(grammar, end_id=2), return_log_probs=True, num_top_log_probs=4)
    emitted, sizes = run(Decoder(tiny_model, prefill_tokens=1024), {0: [free[0], bound, free[1]]})
    assert max(sizes) == 3
    # five of a, b, c and then only the end id, which ends the answer (not part of it)
    assert re.fullmatch("[a-c]{5}", "".join(vocabulary[t] for t in bound.generated)) and emitted[bound][-1] is None
    for s in free:
        assert s.generated == alone(tiny_model, s.prompt, s.max_new_tokens)
    # its log probabilities are of the masked distribution: all of it on a, b and c (the fourth has none),
    # the chosen (greedy) token first; the end id's, which the grammar then forces, is 0 and adds nothing
    assert len(bound.log_probs) == len(bound.top_log_probs) == 5
    for chosen, log_prob, top, ids in zip(bound.generated, bound.log_probs, bound.top_log_probs,
                                          bound.top_log_prob_ids, strict=True):
        assert ids[0] == chosen and top[0] == log_prob and top == sorted(top, reverse=True)
        assert sorted(ids[:3]) == [97, 98, 99] and top[3] == generation.LOG_PROB_FLOOR
        assert math.isclose(sum(math.exp(p) for p in top[:3]), 1.0, rel_tol=1e-5)
    assert math.isclose(bound.cum_log_prob, sum(bound.log_probs), abs_tol=1e-5)


class Stream:
    """One gRPC stream straight to the tensorrt_llm model, token ids in, each response timed."""

    def __init__(self, url: str):
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((time.monotonic(), result, error)))
        self.tokens: list[int] = []
        self.times: list[float] = []
        self.sent_at = 0.0

    def send(self, request_id: str, ids: list[int], tokens: int, end_id: int) -> None:
        values = {"input_ids": np.array([ids], dtype=np.int32), "input_lengths": np.array([[len(ids)]], dtype=np.int32),
                  "request_output_len": np.array([[tokens]], dtype=np.int32),
                  "min_tokens": np.array([[tokens]], dtype=np.int32), "end_id": np.array([[end_id]], dtype=np.int32),
                  "streaming": np.array([[True]])}
        inputs = []
        for name, value in values.items():
            tensor = grpcclient.InferInput(name, list(value.shape), "BOOL" if value.dtype == bool else "INT32")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        self.sent_at = time.monotonic()
        self.client.async_stream_infer("tensorrt_llm", inputs, request_id=request_id, enable_empty_final_response=True)

    def read(self, tokens: int | None = None) -> bool:
        """Take responses until `tokens` have come (None: until the final one); True once final."""
        while tokens is None or len(self.tokens) < tokens:
            at, result, error = self.responses.get(timeout=120)
            assert error is None, error
            ids = result.as_numpy("output_ids")
            if ids is not None and ids.size:
                self.tokens += ids.reshape(-1).tolist()
                self.times.append(at - self.sent_at)
            if result.get_response().parameters["triton_final_response"].bool_param:
                return True
        return False

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def answer_alone(triton, ids: list[int], tokens: int, end_id: int) -> list[int]:
    stream = Stream(triton.grpc)
    try:
        stream.send("alone", ids, tokens, end_id)
        stream.read()
    finally:
        stream.close()
    return stream.tokens


@pytest.mark.triton
def test_a_request_that_arrives_mid_decode_joins_the_running_batch(triton, chat):
    ids, tokenizer = chat
    end_id = tokenizer.eos_token_id
    long_ids, short_ids = ids("Tell me a long story about a lighthouse keeper."), ids("What is 2 + 2?")
    long, short = Stream(triton.grpc), Stream(triton.grpc)
    try:
        long.send("long", long_ids, 120, end_id)
        assert not long.read(4)
        short.send("short", short_ids, 6, end_id)
        assert short.read()
        # the short answer was complete while the long one was still decoding: it did not wait for it
        assert long.responses.qsize() + len(long.tokens) < 120, "the short request waited for the long one"
        assert long.read()
    finally:
        long.close()
        short.close()
    assert len(long.tokens) == 120 and len(short.tokens) == 6
    # greedy: what else was in the batch makes no difference to either answer
    assert short.tokens == answer_alone(triton, short_ids, 6, end_id)
    assert long.tokens == answer_alone(triton, long_ids, 120, end_id)


@pytest.mark.triton
def test_a_cancelled_request_stops_decoding_and_the_next_one_is_answered_promptly(triton, chat):
    ids, tokenizer = chat
    end_id = tokenizer.eos_token_id
    wanted = 1000
    doomed = Stream(triton.grpc)
    doomed.send("doomed-1", ids("Count from one to a thousand."), wanted, end_id)
    doomed.read(8)
    step = statistics.median(b - a for a, b in zip(doomed.times, doomed.times[1:], strict=False))
    doomed.close(cancel=True)
    cancelled_at = time.monotonic()
    line = None
    while line is None and time.monotonic() - cancelled_at < 30:
        line = re.search(r"cancelled request 'doomed-1' after (\d+) tokens", triton.log.read_text())
        time.sleep(0.1)
    assert line, "the model did not log the cancellation"
    # decoding stopped a few steps after the cancel, far short of the thousand tokens asked for
    assert int(line[1]) < 8 + 100
    short = Stream(triton.grpc)
    try:
        short.send("after", ids("What is 2 + 2?"), 4, end_id)
        assert short.read()
    finally:
        short.close()
    # the cancelled request's remaining tokens would have taken ~(wanted - 8) steps; the next one waits for none
    assert short.times[0] < 20 * step + 1.0, (short.times, step)


@pytest.mark.triton
@pytest.mark.parametrize(("name", "value", "message"), [
    ("temperature", -0.5, "temperature -0.5 is out of range: TensorRT-LLM accepts temperature >= 0"),
    ("runtime_top_k", -1, "runtime_top_k -1 is out of range: TensorRT-LLM accepts runtime_top_k >= 0"),
    ("runtime_top_p", 1.5, "runtime_top_p 1.5 is out of range: TensorRT-LLM accepts runtime_top_p <= 1"),
    ("repetition_penalty", 0.0, "repetition_penalty 0.0 is out of range: TensorRT-LLM accepts repetition_penalty > 0"),
])
def test_sampling_values_tensorrt_llm_would_refuse_are_refused_by_name(triton, chat, name, value, message):
    ids, tokenizer = chat
    end_id = tokenizer.eos_token_id
    prompt = ids("Hi")
    request = {"input_ids": [prompt], "input_lengths": [[len(prompt)]], "request_output_len": [[2]],
               "end_id": [[end_id]]}
    client = GrpcLlmClient(triton.grpc, model="tensorrt_llm")
    try:
        refused = client.send({**request, name: [[value]]}, output="output_ids")
        served = client.send(request, output="output_ids")
    finally:
        client.close()
    assert refused.error is not None and message in refused.error, refused.error
    assert served.error is None and len(served.pieces) == 1
