"""tensorrt_llm (CPU runtime): the C++ TensorRT-LLM backend's tensors over a PyTorch model.

Decoupled like the C++ backend: a streaming request gets one response per new token (only the new
ids, as the C++ backend sends them), a non-streaming one gets a single response with all ids.
Requests that arrive together (Triton's dynamic batcher) are decoded as one batch.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from generation import Sampling, Sequence, generate
from model_params import load_config, parameter
from transformers import AutoModelForCausalLM

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class RequestError(ValueError):
    """The request cannot be served as sent; the message is shown to the client."""


def scalar(request, name: str, rows: int, default, kind=float) -> list:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return [default] * rows
    values = tensor.as_numpy().reshape(-1)
    if len(values) != rows:
        raise RequestError(f"{name} has {len(values)} values for {rows} prompts")
    return [kind(v) for v in values]


def word_lists(request, name: str, rows: int) -> list[list[list[int]]]:
    """TensorRT-LLM's [2, N] format back to lists of token sequences, per row."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return [[] for _ in range(rows)]
    lists = tensor.as_numpy().reshape(rows, 2, -1)
    result = []
    for ids, offsets in lists:
        words, start = [], 0
        for end in offsets:
            if end < 0:
                break
            words.append(ids[start:end].tolist())
            start = int(end)
        result.append([w for w in words if w])
    return result


class Pending:
    """One Triton request: its rows (prompts) and where their answers go."""

    def __init__(self, request, rows: list[Sequence], streaming: bool, exclude_input: bool):
        self.request = request
        self.sender = request.get_response_sender()
        self.rows = rows
        self.streaming = streaming
        self.exclude_input = exclude_input
        self.remaining = len(rows)

    def token(self, token: int) -> None:
        if self.streaming:
            self.sender.send(pb_utils.InferenceResponse([
                pb_utils.Tensor("output_ids", np.array([[[token]]], dtype=np.int32)),
                pb_utils.Tensor("sequence_length", np.array([[1]], dtype=np.int32)),
            ]))

    def finish(self) -> None:
        self.remaining -= 1
        if self.remaining:
            return
        if self.streaming:
            self.sender.send(flags=FINAL)
            return
        outputs = [s.generated if self.exclude_input else s.prompt + s.generated for s in self.rows]
        width = max(1, max(len(o) for o in outputs))
        ids = np.array([[o + [s.end_id] * (width - len(o))] for o, s in zip(outputs, self.rows, strict=True)],
                       dtype=np.int32)
        lengths = np.array([[len(o)] for o in outputs], dtype=np.int32)
        self.sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("output_ids", ids),
                                                     pb_utils.Tensor("sequence_length", lengths)]),
                         flags=FINAL)


class TritonPythonModel:
    def initialize(self, args):
        config, version_dir = load_config(args)
        threads = parameter(config, "cpu_threads", int)
        torch.set_num_threads(threads if threads > 0 else len(os.sched_getaffinity(0)))
        checkpoint = version_dir / parameter(config, "checkpoint_dir", str)
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.max_input_len = parameter(config, "max_input_len", int)
        self.max_output_len = parameter(config, "max_output_len", int)
        self.exclude_input_default = parameter(config, "exclude_input_in_output", bool)

    def parse(self, request) -> Pending:
        input_ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
        rows = input_ids.shape[0]
        lengths = scalar(request, "input_lengths", rows, None, int)
        output_lens = scalar(request, "request_output_len", rows, None, int)
        streaming = scalar(request, "streaming", rows, False, bool)[0]
        if streaming and rows > 1:
            raise RequestError("streaming needs one prompt per request; got a batch of "
                               f"{rows}; send them as separate requests")
        if any(w != 1 for w in scalar(request, "beam_width", rows, 1, int)):
            raise RequestError("beam_width must be 1: the CPU runtime does not do beam search")
        end_ids = scalar(request, "end_id", rows, None, int)
        if None in end_ids:
            raise RequestError("end_id is required: the CPU runtime has no tokenizer to take it from")
        pad_ids = scalar(request, "pad_id", rows, end_ids[0], int)
        stop_words = word_lists(request, "stop_words_list", rows)
        bad_words = word_lists(request, "bad_words_list", rows)
        samplings = [
            Sampling(temperature=t, top_k=k, top_p=p, repetition_penalty=r, presence_penalty=pp,
                     frequency_penalty=fp, min_tokens=m, seed=s)
            for t, k, p, r, pp, fp, m, s in zip(
                scalar(request, "temperature", rows, 1.0), scalar(request, "runtime_top_k", rows, 0, int),
                scalar(request, "runtime_top_p", rows, 0.0), scalar(request, "repetition_penalty", rows, 1.0),
                scalar(request, "presence_penalty", rows, 0.0), scalar(request, "frequency_penalty", rows, 0.0),
                scalar(request, "min_tokens", rows, 0, int), scalar(request, "seed", rows, None, int), strict=True)
        ]
        sequences = []
        for row in range(rows):
            length, wanted = lengths[row], output_lens[row]
            if not 1 <= length <= min(self.max_input_len, input_ids.shape[1]):
                raise RequestError(f"input_lengths {length} must be between 1 and "
                                   f"{min(self.max_input_len, input_ids.shape[1])}")
            if not 1 <= wanted <= self.max_output_len:
                raise RequestError(f"request_output_len {wanted} must be between 1 and {self.max_output_len}")
            sequences.append(Sequence(
                prompt=input_ids[row, :length].tolist(), max_new_tokens=wanted, end_id=end_ids[row],
                pad_id=pad_ids[row], stop_words=stop_words[row], bad_words=bad_words[row], sampling=samplings[row]))
        exclude_input = scalar(request, "exclude_input_in_output", rows, self.exclude_input_default, bool)[0]
        return Pending(request, sequences, streaming, exclude_input)

    def execute(self, requests):
        pending: list[Pending] = []
        for request in requests:
            try:
                pending.append(self.parse(request))
            except RequestError as error:
                request.get_response_sender().send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))), flags=FINAL)
        sequences, owners = [], []
        for item in pending:
            sequences += item.rows
            owners += [item] * len(item.rows)
        if sequences:
            generate(self.model, sequences,
                     on_token=lambda index, token: owners[index].token(token),
                     on_finish=lambda index: owners[index].finish(),
                     is_cancelled=lambda index: owners[index].request.is_cancelled())
        return None
