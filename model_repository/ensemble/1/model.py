"""ensemble: text in, text out, over preprocessing -> tensorrt_llm.

The composing models are called through this server's own HTTP endpoint (loopback.py says why not
BLS, and why not gRPC), from one asyncio event loop that carries every request. Streams are detokenized
incrementally (streamed_text.py); at the end of a stream the decode of the whole answer settles the
tail, so the streamed pieces always add up to the non-streamed answer. A request whose client went
away is noticed within cancellation_check_period_ms and its tensorrt_llm request is cancelled.

tensorrt_llm is always asked to stream, and a non-streamed answer is put together from the pieces:
Triton's HTTP frontend cancels a call whose connection closed only once the call's first response
has been written (it pauses the connection until then; tools/policy/upstream_facts.toml,
triton.http_cancel_on_disconnect), and a non-streamed call gets one response, the last, so a
cancelled non-streamed request would decode to max_tokens.

A request that still needs a loopback connection when tritonserver starts shutting down can never
get one (its HTTP frontend refuses new connections at once; tools/policy/upstream_facts.toml,
triton.sigterm_drain): it fails at once with UNAVAILABLE and says to retry on another replica, as
does every request execute() takes from then on, rather than wait for a slot only to fail then. The
pod's preStop (gitops/base/drain.py) waits for the in-flight gauge to reach 0 before the SIGTERM, so
there this is for the requests left when its wait runs out.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import Future

import numpy as np
import triton_python_backend_utils as pb_utils
from answer_metrics import Answer, AnswerMetrics
from end_ids import end_ids
from loopback import Loopback, ModelError, Refused, Stream, infer_tensor, json_values, token_ids, values
from model_params import load_config, load_tokenizer, parameter
from sampling_ranges import range_error
from streamed_text import StreamedText
from utf8_text import NotUtf8

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

PREPROCESSING_INPUTS = {
    "text_input": "QUERY", "max_tokens": "REQUEST_OUTPUT_LEN", "bad_words": "BAD_WORDS_DICT",
    "stop_words": "STOP_WORDS_DICT", "end_id": "END_ID", "pad_id": "PAD_ID",
}
PREPROCESSING_OUTPUTS = {
    "INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths", "REQUEST_OUTPUT_LEN": "request_output_len",
    "BAD_WORDS_IDS": "bad_words_list", "STOP_WORDS_IDS": "stop_words_list", "OUT_END_ID": "end_id",
    "OUT_PAD_ID": "pad_id",
}
SAMPLING_INPUTS = {
    "top_k": "runtime_top_k", "top_p": "runtime_top_p", "temperature": "temperature",
    "length_penalty": "len_penalty", "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty", "min_tokens": "min_tokens",
    "random_seed": "seed", "seed": "seed", "beam_width": "beam_width",
}

# The text-in, text-out llmapi model: what each of our inputs is called there.
LLMAPI_INPUTS = {
    "max_tokens": "sampling_param_max_tokens", "temperature": "sampling_param_temperature",
    "top_k": "sampling_param_top_k", "top_p": "sampling_param_top_p",
    "presence_penalty": "sampling_param_presence_penalty", "frequency_penalty": "sampling_param_frequency_penalty",
    "random_seed": "sampling_param_seed", "seed": "sampling_param_seed", "stop_words": "sampling_param_stop",
}
LLMAPI_UNSUPPORTED = ("bad_words", "end_id", "pad_id", "length_penalty", "repetition_penalty", "min_tokens",
                      "beam_width")


OUTBOX_WINDOW_SECONDS = 0.001
# The loop turns every cancellation_check_period_ms; this long without a turn means it is stuck.
LOOP_STALL_SECONDS = 5.0
# How long execute() waits for a slot before it asks whether tritonserver refuses new connections, and
# how long a refusal is believed before it is asked again.
SHUTDOWN_CHECK_SECONDS = 1.0
# A server too busy to answer its liveness endpoint in this long is busy, not shutting down.
SHUTDOWN_CHECK_TIMEOUT_SECONDS = 5.0
SHUTTING_DOWN = ("tritonserver is shutting down and takes no new work: this request had not started; "
                 "retry on another replica")


class RequestError(ValueError):
    """A step refused the request; the message goes to the client."""


def text_response(texts: list[str]) -> pb_utils.InferenceResponse:
    array = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
    return pb_utils.InferenceResponse([pb_utils.Tensor("text_output", array)])


def end_stops(tokenizer, tokenizer_dir) -> list[str]:
    """The llmapi model stops on the tokenizer's eos only (TensorRT-LLM SamplingParams._setup takes
    tokenizer.eos_token_id), so every end id generation_config.json lists goes to it as a stop string:
    the special token's text, which the LLM API encodes back to that one token."""
    try:
        ids = end_ids(tokenizer_dir, None)
    except ValueError:  # generation_config.json names none: the tokenizer's eos is all there is
        return []
    return [token for token in map(tokenizer.id_to_token, ids) if token is not None]


def error_response(message: str, unavailable: bool = False) -> pb_utils.InferenceResponse:
    """UNAVAILABLE where another replica can answer; otherwise the python backend's default, INTERNAL.
    (pb_utils.TritonError is set on the module only after this file is imported.)"""
    error = pb_utils.TritonError
    return pb_utils.InferenceResponse(error=error(message, error.UNAVAILABLE if unavailable else error.INTERNAL))


def loopback(config: dict) -> Loopback:
    """tools/serve.py names the port it started tritonserver on; in the pod it is the configured one."""
    return Loopback.at(os.environ.get("TRITON_LOOPBACK_HTTP")
                       or f"127.0.0.1:{parameter(config, 'loopback_http_port', int)}")


def keeps_prompt(request, row: int) -> bool:
    """exclude_input_in_output false: the prompt goes before a non-streamed answer, as NVIDIA's ensemble
    does it. tensorrt_llm is never asked for it: its streamed responses never carry the prompt (the
    executor starts a stream after the prompt: LlmRequest's mMaxSentTokenLen), so the ensemble adds it."""
    tensor = pb_utils.get_input_tensor_by_name(request, "exclude_input_in_output")
    return tensor is not None and not bool(tensor.as_numpy()[row].reshape(-1)[0])


def check_sampling(request) -> None:
    """Refuse, by name, a sampling value TensorRT-LLM would refuse (or, worse, take) whatever the runtime."""
    for ours, theirs in SAMPLING_INPUTS.items():
        tensor = pb_utils.get_input_tensor_by_name(request, ours)
        for value in tensor.as_numpy().reshape(-1).tolist() if tensor is not None else []:
            message = range_error(ours, theirs, value)
            if message:
                raise RequestError(message)


class Outbox:
    """Streamed text on its way to the client: pieces that arrive within OUTBOX_WINDOW_SECONDS of the
    first unsent one travel together. A response to the client is the costliest step per token (an
    IPC round trip to tritonserver, then its gRPC or HTTP write: ~45% of this process's CPU), so when
    the process falls behind the engine, several tokens share one and the backlog drains. A GPU
    engine's decode step (10-30 ms) is far longer than the window, so below saturation every token
    still goes out on its own, at most a millisecond later."""

    def __init__(self, sender, loop: asyncio.AbstractEventLoop):
        self.sender = sender
        self.loop = loop
        self.pending = ""
        self.flush_scheduled = False

    def put(self, piece: str) -> None:
        if not piece:
            return
        self.pending += piece
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_later(OUTBOX_WINDOW_SECONDS, self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.pending:
            self.sender.send(text_response([self.pending]))
            self.pending = ""

    def finish(self, tail: str) -> None:
        last, self.pending = self.pending + tail, ""
        if last:
            self.sender.send(text_response([last]), flags=FINAL)
        else:
            self.sender.send(flags=FINAL)


class Tracked:
    """One client request and the tensorrt_llm streams it has open, so a cancellation reaches them."""

    def __init__(self, request, metrics: AnswerMetrics):
        self.request = request
        self.metrics = metrics
        self.streams: list[Stream] = []
        self.cancelled = False
        self.answer = Answer()  # its output tokens, for the answer metrics
        self.waiting = True  # no response from tensorrt_llm yet (the waiting gauge counts it)

    def responded(self) -> None:
        """A response came from tensorrt_llm: the request has its batch slot."""
        if self.waiting:
            self.waiting = False
            self.metrics.responded()

    def cancel(self) -> None:
        self.cancelled = True
        for stream in self.streams:
            stream.cancel()


class TritonPythonModel:
    def initialize(self, args):
        config, version_dir = load_config(args)
        self.tokenizer = load_tokenizer(config, version_dir)
        self.end_stops = end_stops(self.tokenizer, version_dir / parameter(config, "tokenizer_dir", str))
        self.skip_special_tokens = parameter(config, "skip_special_tokens", bool)
        self.text_in_text_out = parameter(config, "tensorrt_llm_inputs", str) == "text"
        self.check_period = parameter(config, "cancellation_check_period_ms", int) / 1000
        self.loopback = loopback(config)
        self.metrics = AnswerMetrics(args["model_name"], args["model_version"])
        # execute() blocks while every slot is taken, so the backlog stays in Triton's queue, where
        # the pending-request metric (a part of the HPA's series, with the waiting gauge) can see it.
        self.slots = threading.BoundedSemaphore(parameter(config, "max_concurrent_requests", int))
        # (whether tritonserver refused the latest new connection asked of it, and when)
        self.refused = (False, 0.0)
        self.tracked: set[Tracked] = set()
        self.loop_turned_at = time.monotonic()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ensemble-loop", daemon=True)
        self.thread.start()
        self.watcher = asyncio.run_coroutine_threadsafe(self.watch_cancellations(), self.loop)

    def execute(self, requests):
        # All counted before the first waits for a slot: the rest of the batch is out of Triton's queue
        # (its pending count) from now, and waits here just as much.
        for _ in requests:
            self.metrics.accepted()
        for request in requests:
            if not self.place():
                request.get_response_sender().send(
                    error_response(SHUTTING_DOWN, unavailable=True), flags=FINAL)
                self.metrics.finished("error", Answer(), waiting=True)
                continue
            future = asyncio.run_coroutine_threadsafe(self.serve(request), self.loop)
            future.add_done_callback(self.release)
        return None

    def place(self) -> bool:
        """Wait for a slot; False, at once, once tritonserver refuses new connections: a request that has
        none yet could never run here. Requests wait in Triton's queue meanwhile, and every slot may be
        held by a stream that goes on for minutes, so while it waits it asks every SHUTDOWN_CHECK_SECONDS."""
        while True:
            if self.refusing():
                return False
            if self.slots.acquire(timeout=SHUTDOWN_CHECK_SECONDS):
                return True
            self.check_refusing()

    def refusing(self) -> bool:
        """The latest word on whether tritonserver refuses new connections. A server that started shutting
        down never takes one again, but a refusal older than SHUTDOWN_CHECK_SECONDS is checked before it
        turns more requests away, so that one with another cause does not stick."""
        refused, seen = self.refused
        if refused and time.monotonic() - seen > SHUTDOWN_CHECK_SECONDS:
            self.check_refusing()
            refused, _ = self.refused
        return refused

    def check_refusing(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self.loopback.refuses(), self.loop)
        try:
            self.refused = (future.result(timeout=SHUTDOWN_CHECK_TIMEOUT_SECONDS), time.monotonic())
        except TimeoutError:
            future.cancel()

    def release(self, future: Future) -> None:
        self.slots.release()
        if not future.cancelled() and future.exception() is not None:
            pb_utils.Logger.log_error(f"ensemble: {future.exception()!r}")

    def finalize(self):
        self.watcher.cancel()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)

    def is_ready(self) -> bool:
        """Not ready once the event loop stopped turning: every request of this process would hang.

        python_backend calls it for /v2/models/ensemble/ready (#430, 2026-03), and tritonserver's
        strict /v2/health/ready asks each model's readiness (core #473, 2026-03, which also reports a
        dead stub): both are in the pinned 26.07, where the readiness probe then takes the pod out of
        rotation. The 2.51 used locally has neither: there a dead stub leaves the server ready."""
        return self.thread.is_alive() and time.monotonic() - self.loop_turned_at < LOOP_STALL_SECONDS

    async def watch_cancellations(self) -> None:
        """Ask Triton, every period, whether each open request was cancelled (a client that went away)."""
        while True:
            self.loop_turned_at = time.monotonic()
            await asyncio.sleep(self.check_period)
            for tracked in list(self.tracked):
                if not tracked.cancelled and tracked.request.is_cancelled():
                    tracked.cancel()

    async def serve(self, request) -> None:
        sender = request.get_response_sender()
        tracked = Tracked(request, self.metrics)
        self.tracked.add(tracked)
        outcome = "error"
        try:
            await self.answer(request, sender, tracked)
            outcome = "ok"
        except (RequestError, ModelError, NotUtf8) as error:
            if isinstance(error, Refused):
                # seen long ago: execute() checks it before it turns anyone away, so one refusal
                # with another cause fails this request only
                self.refused = (True, 0.0)
            outcome = "cancelled" if tracked.cancelled else "error"
            message = "request cancelled" if tracked.cancelled else str(error)
            sender.send(error_response(message, unavailable=outcome == "error" and isinstance(error, Refused)),
                        flags=FINAL)
        except Exception as error:  # a bug must still end the request, or the client waits forever
            pb_utils.Logger.log_error(f"ensemble: {error!r}")
            sender.send(error_response(f"internal error: {error!r}"), flags=FINAL)
        finally:
            self.tracked.discard(tracked)
            self.metrics.finished(outcome, tracked.answer, tracked.waiting)

    async def answer(self, request, sender, tracked: Tracked) -> None:
        stream_tensor = pb_utils.get_input_tensor_by_name(request, "stream")
        stream = bool(stream_tensor.as_numpy().reshape(-1)[0]) if stream_tensor is not None else False
        rows = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().shape[0]
        if stream and rows > 1:
            raise RequestError(f"stream=true needs one text_input per request; got a batch of {rows}")
        check_sampling(request)
        if self.text_in_text_out:
            await self.text_rows(request, sender, tracked, rows, stream)
        elif stream:
            await self.stream_row(request, sender, tracked)
        else:
            # the rows of one request run side by side, so tensorrt_llm batches them
            ids = await asyncio.gather(*(self.generate_ids(request, tracked, row) for row in range(rows)))
            sender.send(text_response([self.decode(each) for each in ids]), flags=FINAL)

    @staticmethod
    def present(request, names: dict[str, str], row: int):
        """(our name, their name, this row of the input) for each of `names` the request carries."""
        for ours, theirs in names.items():
            tensor = pb_utils.get_input_tensor_by_name(request, ours)
            if tensor is not None:
                yield ours, theirs, tensor.as_numpy()[row:row + 1]

    async def tensorrt_llm_stream(self, request, tracked: Tracked, row: int) -> tuple[Stream, list[int]]:
        """The row's tensorrt_llm call, streamed whatever the client asked (the module docstring says
        why), and the prompt's token ids."""
        preprocessed = await self.loopback.infer(
            "preprocessing", [infer_tensor(theirs, array, ours) for ours, theirs, array in
                              self.present(request, PREPROCESSING_INPUTS, row)], list(PREPROCESSING_OUTPUTS))
        inputs = {theirs: preprocessed[ours]["data"] for ours, theirs in PREPROCESSING_OUTPUTS.items()}
        inputs |= {theirs: json_values(ours, array) for ours, theirs, array in
                   self.present(request, SAMPLING_INPUTS, row)}
        inputs["streaming"] = [True]
        prompt = inputs["input_ids"][:inputs["input_lengths"][0]]
        return self.open(tracked, "tensorrt_llm", inputs), prompt

    def open(self, tracked: Tracked, model: str, inputs: dict[str, list]) -> Stream:
        if tracked.cancelled:
            raise RequestError("request cancelled")
        opened = self.loopback.stream(model, inputs)
        tracked.streams.append(opened)
        return opened

    async def generate_ids(self, request, tracked: Tracked, row: int) -> list[int]:
        """A non-streamed row's ids: the streamed ones, the prompt's before them if the client asked."""
        opened, prompt = await self.tensorrt_llm_stream(request, tracked, row)
        ids: list[int] = []
        async for event in opened.responses():
            tracked.responded()
            ids += token_ids(event)
        tracked.answer.count(len(ids))
        return prompt + ids if keeps_prompt(request, row) else ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    async def stream_row(self, request, sender, tracked: Tracked) -> None:
        text = StreamedText(self.tokenizer, self.skip_special_tokens)
        outbox = Outbox(sender, asyncio.get_running_loop())
        opened, _ = await self.tensorrt_llm_stream(request, tracked, 0)
        async for event in opened.responses():
            tracked.responded()
            ids = token_ids(event)
            tracked.answer.add(len(ids))
            outbox.put(text.add(ids))
        try:
            tail = text.tail(self.decode(text.ids))
        except ValueError as error:
            raise RequestError(f"internal error: {error}") from None
        outbox.finish(tail)

    def llmapi_inputs(self, request, row: int) -> dict[str, list]:
        for name in LLMAPI_UNSUPPORTED:
            if pb_utils.get_input_tensor_by_name(request, name) is not None:
                raise RequestError(f"{name} is not supported by the llmapi runtime")
        text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()[row]
        if not text[0].strip():
            raise RequestError("text_input is empty; send the prompt text")
        max_tokens = int(pb_utils.get_input_tensor_by_name(request, "max_tokens").as_numpy()[row][0])
        if max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {max_tokens}")
        # NVIDIA's llmapi model has max_batch_size 0: its tensors carry no batch dimension. Streamed
        # whatever the client asked, as tensorrt_llm_stream says why.
        inputs = {"text_input": json_values("text_input", text), "streaming": [True]}
        inputs |= {theirs: json_values(ours, array)
                   for ours, theirs, array in self.present(request, LLMAPI_INPUTS, row)}
        if self.end_stops:
            inputs["sampling_param_stop"] = inputs.get("sampling_param_stop", []) + self.end_stops
        return inputs

    async def text_rows(self, request, sender, tracked: Tracked, rows: int, stream: bool) -> None:
        """The llmapi model already streams text deltas (its model.py makes them so): pass them on, or
        join them for a non-streamed answer (after the prompt, if the client asked for it)."""
        texts = []
        for row in range(rows):
            inputs = self.llmapi_inputs(request, row)
            pieces = list(inputs["text_input"]) if not stream and keeps_prompt(request, row) else []
            opened = self.open(tracked, "tensorrt_llm", inputs)
            async for event in opened.responses():
                tracked.responded()
                piece = "".join(values(event, "text_output"))
                if stream and piece:
                    sender.send(text_response([piece]))
                pieces.append(piece)
            texts.append("".join(pieces))
        if stream:
            sender.send(flags=FINAL)
        else:
            sender.send(text_response(texts), flags=FINAL)
