"""tensorrt_llm (CPU runtime): the C++ TensorRT-LLM backend's tensors over a PyTorch model.

Decoupled like the C++ backend: a streaming request gets one response per new token (only the new
ids, as the C++ backend sends them), a non-streaming one gets a single response with all ids.

Also as the C++ backend: guided_decoding_guide_type and guided_decoding_guide constrain the answer
(guided.py), return_log_probs adds output_log_probs and cum_log_probs, num_return_sequences > 1
answers one prompt with that many sequences, each response carrying its sequence_index (streamed or
not, one response per sequence when not streaming, as the backend sends one per executor result). A
streamed response's output_log_probs are its new tokens' (the backend's repeat every earlier token's
too: a reader takes the last len(output_ids) of them either way). Our extension: num_top_log_probs
returns that many most likely tokens per step in top_log_probs and top_log_prob_ids.

Batching is in-flight, as TensorRT-LLM's inflight batcher does it: execute() only parses and queues
requests, and one decode thread owns the model. Before each decode step it lets waiting sequences into
the running batch (at most max_batch_size rows), and finished or cancelled ones leave it at once.
execute() returns when its requests are in the batch, so while the batch is full the rest wait in
Triton's queue (or in this execute()). The HPA counts them before they get here, as requests with no
first token yet (gitops/components/autoscaling).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import deque

import guided
import numpy as np
import tokenizer_info
import torch
import triton_python_backend_utils as pb_utils
from generation import Decoder, Emitted, Sampling, Sequence
from model_params import load_config, parameter
from sampling_ranges import range_error
from transformers import AutoModelForCausalLM

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Prompt tokens fed per decode step. On a CPU prefill is compute-bound (a prompt token costs about what
# a decode step of a few rows does), so prompts that arrive together go in a few per step, in order:
# the first of a burst answers without waiting for the whole burst's prefill, and a long prompt joins
# over several steps instead of stalling the running batch.
PREFILL_CHUNK_TOKENS = 64
# is_cancelled() is an IPC round trip to the server: ask each request this often, not every token.
CANCEL_CHECK_SECONDS = 0.04


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


def sampling_scalar(request, name: str, rows: int, default, kind=float) -> list:
    """scalar() for a sampling input, refused in TensorRT-LLM's terms when it would refuse the value."""
    values = scalar(request, name, rows, default, kind)
    for value in values:
        if value is not None and (message := range_error(name, name, value)):
            raise RequestError(message)
    return values


def texts(request, name: str, rows: int) -> list[str | None]:
    """A TYPE_STRING input per row, None where it is absent or empty (the C++ backend's "no guide")."""

    def text(value) -> str | None:
        try:
            return (value.decode("utf-8") if isinstance(value, bytes) else str(value)) or None
        except UnicodeDecodeError:
            raise RequestError(f"{name} is not UTF-8 text") from None

    return scalar(request, name, rows, None, text)


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


def tensor(name: str, values, dtype) -> pb_utils.Tensor:
    return pb_utils.Tensor(name, np.array(values, dtype=dtype))


def per_token(name: str, rows: list[list], shape: tuple[int, ...], fill, dtype) -> pb_utils.Tensor:
    """Rows of per-token values as [rows, beam 1, tokens, *shape], shorter rows padded with `fill` (the
    backend pads beams of unequal length with -1)."""
    array = np.full((len(rows), 1, max(len(row) for row in rows), *shape), fill, dtype=dtype)
    for index, row in enumerate(rows):
        array[index, 0, :len(row)] = np.array(row, dtype=dtype).reshape(len(row), *shape)
    return pb_utils.Tensor(name, array)


class Pending:
    """One Triton request: its rows (prompts, or one prompt's num_return_sequences) and where answers go."""

    def __init__(self, request, rows: list[Sequence], streaming: bool, exclude_input: bool, sequences: int = 1):
        self.request = request
        self.sender = request.get_response_sender()
        self.rows = rows
        self.streaming = streaming
        self.exclude_input = exclude_input
        self.sequences = sequences  # num_return_sequences: > 1 sends sequence_index, and each its own answer
        self.remaining = len(rows)
        self.ended = False  # the final response is sent: nothing more goes out
        self.checked_at = time.monotonic()

    def extras(self, rows: list[Sequence]) -> list[pb_utils.Tensor]:
        """Every token's log probabilities and the sequence index of `rows`, for a non-streamed answer."""
        outputs = []
        if rows[0].return_log_probs:
            outputs += [per_token("output_log_probs", [s.log_probs for s in rows], (), -1.0, np.float32),
                        tensor("cum_log_probs", [[s.cum_log_prob] for s in rows], np.float32)]
        if rows[0].num_top_log_probs:
            shape = (rows[0].num_top_log_probs,)
            outputs += [per_token("top_log_probs", [s.top_log_probs for s in rows], shape, -1.0, np.float32),
                        per_token("top_log_prob_ids", [s.top_log_prob_ids for s in rows], shape, -1, np.int32)]
        return outputs + self.index([s.index for s in rows])

    def index(self, indices: list[int]) -> list[pb_utils.Tensor]:
        return [tensor("sequence_index", [[i] for i in indices], np.int32)] if self.sequences > 1 else []

    def streamed(self, event: Emitted) -> list[pb_utils.Tensor]:
        """What a streamed response carries beside the new token's id (none at the end id)."""
        sequence, choice = event.sequence, event.choice
        outputs = []
        if sequence.return_log_probs:
            logged = [choice.log_prob] if event.token is not None else []
            outputs += [tensor("output_log_probs", [[logged]], np.float32),
                        tensor("cum_log_probs", [[event.cum_log_prob]], np.float32)]
        if sequence.num_top_log_probs and event.token is not None:
            outputs += [tensor("top_log_probs", [[[choice.top[0]]]], np.float32),
                        tensor("top_log_prob_ids", [[[choice.top[1]]]], np.int32)]
        return outputs + self.index([sequence.index])

    def token(self, event: Emitted) -> None:
        if self.streaming and not self.ended:
            self.sender.send(pb_utils.InferenceResponse([
                tensor("output_ids", [[[event.token]]], np.int32),
                tensor("sequence_length", [[1]], np.int32),
                *self.streamed(event),
            ]))

    def finish(self, event: Emitted) -> None:
        """The event's sequence is complete."""
        self.remaining -= 1
        if self.ended:
            return
        last = self.remaining == 0
        self.ended = last
        flags = FINAL if last else 0
        if self.streaming:
            if event.token is None and event.sequence.return_log_probs:
                # The backend's last result for a sequence the end id ended: no new ids, and cum_log_probs
                # now counting the end id too.
                self.sender.send(pb_utils.InferenceResponse([
                    tensor("output_ids", np.zeros((1, 1, 0)), np.int32), tensor("sequence_length", [[0]], np.int32),
                    *self.streamed(event)]), flags=flags)
            elif last:
                self.sender.send(flags=FINAL)
            return
        if self.sequences > 1:  # each sequence its own answer, as the backend sends each result
            self.sender.send(pb_utils.InferenceResponse(self.answer([event.sequence])), flags=flags)
        elif last:
            self.sender.send(pb_utils.InferenceResponse(self.answer(self.rows)), flags=FINAL)

    def answer(self, rows: list[Sequence]) -> list[pb_utils.Tensor]:
        """A non-streamed response: every token of `rows` (after the prompt, unless excluded)."""
        outputs = [s.generated if self.exclude_input else s.prompt + s.generated for s in rows]
        width = max(1, max(len(o) for o in outputs))
        ids = [[o + [s.end_id] * (width - len(o))] for o, s in zip(outputs, rows, strict=True)]
        return [tensor("output_ids", ids, np.int32), tensor("sequence_length", [[len(o)] for o in outputs], np.int32),
                *self.extras(rows)]

    def fail(self, message: str, cancelled: bool = False) -> None:
        if not self.ended:
            self.ended = True
            code = pb_utils.TritonError.CANCELLED if cancelled else pb_utils.TritonError.INTERNAL
            self.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)), flags=FINAL)

    def cancelled(self, now: float) -> bool:
        """Whether the client cancelled; asks the server at most every CANCEL_CHECK_SECONDS."""
        if now - self.checked_at < CANCEL_CHECK_SECONDS:
            return False
        self.checked_at = now
        return self.request.is_cancelled()


class Batcher:
    """The decode thread and the queue in front of it."""

    def __init__(self, model, max_rows: int, threads: int):
        self.decoder = Decoder(model, PREFILL_CHUNK_TOKENS)
        self.max_rows = max_rows
        self.threads = threads
        self.condition = threading.Condition()
        self.waiting: deque[tuple[Sequence, Pending]] = deque()
        self.owners: dict[Sequence, Pending] = {}  # every sequence in the decoder
        self.stopping = False
        self.thread = threading.Thread(target=self.run, name="tensorrt_llm-decode")
        self.thread.start()

    def submit(self, requests: list[Pending]) -> None:
        """Queue the requests' rows in order; return once they are all in the batch."""
        with self.condition:
            self.waiting.extend((row, item) for item in requests for row in item.rows)
            self.condition.notify_all()
            self.condition.wait_for(lambda: self.stopping or not self.waiting)

    def stop(self) -> None:
        with self.condition:
            self.stopping = True
            self.condition.notify_all()
        self.thread.join()

    def run(self) -> None:
        # OpenMP's thread count is per thread, and this one would start from OMP_NUM_THREADS.
        torch.set_num_threads(self.threads)
        while True:
            with self.condition:
                self.condition.wait_for(lambda: self.stopping or self.waiting or self.owners)
                if self.stopping:
                    break
                self.admit()
            self.drop_cancelled()
            try:
                emitted = self.decoder.step()
            except Exception as error:  # the model failed: end what it held, keep serving
                pb_utils.Logger.log_error(f"tensorrt_llm: decode step failed: {error!r}")
                self.end_all(f"decoding failed: {error}")
                self.decoder.reset()
                continue
            self.deliver(emitted)
        self.decoder.reset()
        self.end_all("tensorrt_llm is shutting down")

    def admit(self) -> None:
        """Waiting rows, in order, into the free places of the batch (with the lock held)."""
        if self.decoder.joining is not None or not self.waiting:
            return
        joining: list[Sequence] = []
        while self.waiting and len(self.owners) < self.max_rows:
            row, owner = self.waiting[0]
            width = max(len(s.prompt) for s in [*joining, row])  # the group is left-padded to its longest
            if joining and width * (len(joining) + 1) > PREFILL_CHUNK_TOKENS:
                break
            self.waiting.popleft()
            self.owners[row] = owner
            joining.append(row)
        if joining:
            self.decoder.admit(joining)
            self.condition.notify_all()

    def drop_cancelled(self) -> None:
        now = time.monotonic()
        doomed: set[Sequence] = set()
        for owner in dict.fromkeys(self.owners.values()):
            if not owner.ended and owner.cancelled(now):
                tokens = sum(len(row.generated) for row in owner.rows)
                pb_utils.Logger.log_info(f"tensorrt_llm: cancelled request {owner.request.request_id()!r} "
                                         f"after {tokens} tokens")
                owner.fail("request cancelled", cancelled=True)
            if owner.ended:
                doomed.update(owner.rows)
        if doomed:
            self.decoder.remove(doomed)
            # rows still in prefill are dropped once they have joined, on a later pass
            for row in doomed - set(self.decoder.sequences):
                self.owners.pop(row, None)

    def deliver(self, emitted: list[Emitted]) -> None:
        for event in emitted:
            owner = self.owners[event.sequence]
            if event.done:
                del self.owners[event.sequence]
            try:
                if event.token is not None:
                    owner.token(event)
                if event.done:
                    owner.finish(event)
            except pb_utils.TritonModelException as error:  # the client is gone: stop decoding for it
                pb_utils.Logger.log_warn(f"tensorrt_llm: dropping request {owner.request.request_id()!r}: {error}")
                owner.ended = True

    def end_all(self, message: str) -> None:
        with self.condition:
            held = [*self.owners.values(), *(owner for _, owner in self.waiting)]
            self.owners.clear()
            self.waiting.clear()
            self.condition.notify_all()
        for owner in dict.fromkeys(held):
            owner.fail(message)


class TritonPythonModel:
    def initialize(self, args):
        config, version_dir = load_config(args)
        threads = parameter(config, "cpu_threads", int)
        threads = threads if threads > 0 else len(os.sched_getaffinity(0))
        torch.set_num_threads(threads)
        checkpoint = version_dir / parameter(config, "checkpoint_dir", str)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.max_input_len = parameter(config, "max_input_len", int)
        self.max_output_len = parameter(config, "max_output_len", int)
        self.max_top_log_probs = parameter(config, "max_top_log_probs", int)
        self.exclude_input_default = parameter(config, "exclude_input_in_output", bool)
        self.max_rows = config["max_batch_size"]
        # The grammar's vocabulary is the model's logits, as TensorRT-LLM sizes it (padded ids masked).
        vocabulary = tokenizer_info.read(version_dir / tokenizer_info.FILE_NAME,
                                         model.get_output_embeddings().out_features)
        self.guides = guided.Guides(vocabulary, threads)
        self.batcher = Batcher(model, self.max_rows, threads)

    def parse(self, request) -> Pending:
        input_ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
        rows = input_ids.shape[0]
        lengths = scalar(request, "input_lengths", rows, None, int)
        output_lens = scalar(request, "request_output_len", rows, None, int)
        streaming = scalar(request, "streaming", rows, False, bool)[0]
        if streaming and rows > 1:
            raise RequestError("streaming needs one prompt per request; got a batch of "
                               f"{rows}; send them as separate requests")
        if any(w != 1 for w in sampling_scalar(request, "beam_width", rows, 1, int)):
            raise RequestError("beam_width must be 1: the CPU runtime does not do beam search")
        end_ids = scalar(request, "end_id", rows, None, int)
        if None in end_ids:
            raise RequestError("end_id is required: the CPU runtime has no tokenizer to take it from")
        pad_ids = scalar(request, "pad_id", rows, end_ids[0], int)
        stop_words = word_lists(request, "stop_words_list", rows)
        bad_words = word_lists(request, "bad_words_list", rows)
        sampling_scalar(request, "len_penalty", rows, 1.0)  # no beams, so no effect here; refused alike
        samplings = [
            Sampling(temperature=t, top_k=k, top_p=p, repetition_penalty=r, presence_penalty=pp,
                     frequency_penalty=fp, min_tokens=m, seed=s)
            for t, k, p, r, pp, fp, m, s in zip(
                sampling_scalar(request, "temperature", rows, 1.0),
                sampling_scalar(request, "runtime_top_k", rows, 0, int),
                sampling_scalar(request, "runtime_top_p", rows, 0.0),
                sampling_scalar(request, "repetition_penalty", rows, 1.0),
                sampling_scalar(request, "presence_penalty", rows, 0.0),
                sampling_scalar(request, "frequency_penalty", rows, 0.0),
                sampling_scalar(request, "min_tokens", rows, 0, int),
                sampling_scalar(request, "seed", rows, None, int), strict=True)
        ]
        count = self.sequences_of(request, rows)
        return_log_probs = scalar(request, "return_log_probs", rows, False, bool)
        top_counts = scalar(request, "num_top_log_probs", rows, 0, int)
        if any(not 0 <= n <= self.max_top_log_probs for n in top_counts):
            raise RequestError(f"num_top_log_probs must be between 0 and {self.max_top_log_probs}")
        if len(set(return_log_probs)) > 1 or len(set(top_counts)) > 1:  # the rows share one response
            raise RequestError("return_log_probs and num_top_log_probs must be the same for every prompt of a "
                               "request; send the others as separate requests")
        grammars = self.grammars(request, rows)
        sequences = []
        for row in range(rows):
            length, wanted = lengths[row], output_lens[row]
            if not 1 <= length <= min(self.max_input_len, input_ids.shape[1]):
                raise RequestError(f"input_lengths {length} must be between 1 and "
                                   f"{min(self.max_input_len, input_ids.shape[1])}")
            if not 1 <= wanted <= self.max_output_len:
                raise RequestError(f"request_output_len {wanted} must be between 1 and {self.max_output_len}")
            for index in range(count):
                sampling = samplings[row]
                if sampling.seed is not None:  # TensorRT-LLM seeds each further sequence with seed + its index
                    sampling = dataclasses.replace(sampling, seed=sampling.seed + index)
                sequences.append(Sequence(
                    prompt=input_ids[row, :length].tolist(), max_new_tokens=wanted, end_id=end_ids[row],
                    pad_id=pad_ids[row], stop_words=stop_words[row], bad_words=bad_words[row], sampling=sampling,
                    grammar=None if grammars[row] is None else guided.matcher(grammars[row], end_ids[row]),
                    return_log_probs=return_log_probs[row], num_top_log_probs=top_counts[row], index=index))
        exclude_input = scalar(request, "exclude_input_in_output", rows, self.exclude_input_default, bool)[0]
        return Pending(request, sequences, streaming, exclude_input, count)

    def sequences_of(self, request, rows: int) -> int:
        """num_return_sequences: how many answers the (one) prompt gets, each a row of the batch."""
        counts = sampling_scalar(request, "num_return_sequences", rows, 1, int)
        if max(counts) > 1 and rows > 1:
            raise RequestError(f"num_return_sequences > 1 needs one prompt per request; got a batch of {rows}")
        if counts[0] > self.max_rows:
            raise RequestError(f"num_return_sequences {counts[0]} is more than max_batch_size {self.max_rows}: "
                               "each sequence is a row of the batch")
        return counts[0]

    def grammars(self, request, rows: int) -> list:
        """Each row's compiled guide (compiled once per distinct guide: the compiler caches), or None."""
        kinds = texts(request, "guided_decoding_guide_type", rows)
        guides = texts(request, "guided_decoding_guide", rows)
        compiled = []
        for kind, guide in zip(kinds, guides, strict=True):
            if kind is None:
                if guide is not None:
                    raise RequestError("guided_decoding_guide needs guided_decoding_guide_type "
                                       f"({', '.join(guided.GUIDE_TYPES)})")
                compiled.append(None)
                continue
            try:
                compiled.append(self.guides.compile(kind, guide))
            except guided.GuideError as error:
                raise RequestError(str(error)) from None
        return compiled

    def execute(self, requests):
        pending: list[Pending] = []
        for request in requests:
            try:
                pending.append(self.parse(request))
            except RequestError as error:
                request.get_response_sender().send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))), flags=FINAL)
        if pending:
            self.batcher.submit(pending)
        return None

    def finalize(self):
        self.batcher.stop()
