"""The Triton side: one streamed request per answer over Triton's HTTP generate_stream endpoint.

Two paths, chosen per repository (`--path`, default auto):
  * direct: token ids straight to `tensorrt_llm` (the cpu and engine runtimes). The gateway
    tokenizes and detokenizes itself, so the ensemble's python process is not on the path;
    bench.py --ceiling --gateway measures what that saves per streamed token (README).
  * ensemble: the rendered prompt as `text_input` to `ensemble`, text back (the llmapi runtime,
    whose `tensorrt_llm` takes text; or a build whose ensemble applies no chat template).
Either way Triton streams (`streaming`/`stream` true) also for non-streamed answers, so both are
made of the same pieces. The stream is read with the ensemble's own loopback client
(model_repository/common/loopback.py says why HTTP and not gRPC: it costs a reader less than half
the CPU per token), and a stop sequence or a client that went away closes its connection, which
cancels the request in Triton and so in the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

# model_repository/common, on the path from gateway/__init__.py
from loopback import Loopback, ModelError, Stream, token_ids, values
from streamed_text import StreamedText

from gateway.errors import ApiError
from gateway.logprobs import TokenLogprob, of_event
from gateway.repository import Model
from gateway.validation import Generation

# Seconds a client should wait before retrying a 503: Triton's queue drains within a few decode
# steps, while a Triton that cannot be reached is restarting and loads its model for tens of seconds.
RETRY_FULL, RETRY_UNREACHABLE = "1", "10"


@dataclass
class Answer:
    """What one request produced so far: counted as it streams, for usage and finish_reason."""

    ids: list[int]
    completion_tokens: int = 0
    stopped: bool = False  # one of the request's stop_token_ids ended it
    running_count: bool = False  # keep completion_tokens current on the ensemble path (continuous usage)
    logprobs: list[TokenLogprob] | None = None  # each token's, where the request asked for them


def sampling(job: Generation, names: dict[str, str]) -> dict[str, list]:
    """OpenAI's sampling in TensorRT-LLM's terms; `names` maps ours to the model's input names."""
    chosen: dict[str, list] = {"presence_penalty": [job.presence_penalty], "frequency_penalty": [job.frequency_penalty]}
    if job.greedy:
        chosen["top_k"] = [1]
    else:
        chosen["temperature"] = [job.temperature]
        # top_k 0 with top_p 0 is greedy on TensorRT-LLM; OpenAI's top_p 1 means the whole distribution.
        chosen["top_p"] = [job.top_p]
        if job.top_k:
            chosen["top_k"] = [job.top_k]
    if job.seed is not None:
        chosen["seed"] = [job.seed]
    # Sent only when asked for: the llmapi path has no input for them (cannot_carry() says so).
    if job.repetition_penalty != 1.0:
        chosen["repetition_penalty"] = [job.repetition_penalty]
    if job.engine_min_tokens:
        chosen["min_tokens"] = [job.engine_min_tokens]
    return {names[key]: value for key, value in chosen.items()}


DIRECT_SAMPLING = {"presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
                   "top_k": "runtime_top_k", "temperature": "temperature", "top_p": "runtime_top_p", "seed": "seed",
                   "repetition_penalty": "repetition_penalty", "min_tokens": "min_tokens"}
ENSEMBLE_SAMPLING = {name: name for name in DIRECT_SAMPLING} | {"seed": "random_seed"}


def word_list(ids: list[int]) -> list[int]:
    """Token ids as one-token stop words, as preprocessing sends them (a [2, N] word list, flat: the
    ids, then their end offsets)."""
    return ids + list(range(1, len(ids) + 1))


def cannot_carry(model: Model, path: str) -> dict[str, str]:
    """The sampling extensions this repository and path cannot carry to the engine, and why."""
    cannot = {"min_p": "no TensorRT-LLM model here takes min_p (the C++ backend's tensorrt_llm and the "
                       "llmapi model have no such input)"}
    if not model.token_ids:
        for name in ("repetition_penalty", "min_tokens", "ignore_eos"):
            cannot[name] = f"the llmapi runtime's tensorrt_llm model has no input for {name}"
    if path == "ensemble":
        cannot["stop_token_ids"] = "the ensemble path takes stop sequences as text, not token ids"
        if len(model.end_ids) > 1 and "ignore_eos" not in cannot:
            cannot["ignore_eos"] = ("the ensemble always stops this model on its other end ids "
                                    f"{list(model.end_ids[1:])}; use the direct path")
    return cannot


def sequence_index(event: dict, sequences: int) -> int:
    """Which of the request's answers a response belongs to (sequence_index is sent only when there are
    several)."""
    if sequences == 1:
        return 0
    index = values(event, "sequence_index")
    if not index or not 0 <= int(index[0]) < sequences:
        raise ValueError(f"tensorrt_llm answered num_return_sequences {sequences} with sequence_index {index}")
    return int(index[0])


def triton_error(error: ModelError, stream: Stream) -> ApiError:
    """Triton's failure as a status the client can act on: 503 with Retry-After when Triton cannot be
    reached or is full (its HTTP 503, "Exceeds maximum queue size"), which the openai SDKs retry;
    502 when it refused the request."""
    status = stream.exchange.status if stream.exchange is not None else 0
    if status == 0:  # no connection, or it closed before Triton wrote a status line
        return ApiError(f"Triton cannot be reached (restarting?): {error}", None, status=503, type="server_error",
                        code="triton_unavailable", headers={"Retry-After": RETRY_UNREACHABLE})
    if status == 503:
        return ApiError(f"Triton is full or not ready: {error}", None, status=503, type="server_error",
                        code="triton_unavailable", headers={"Retry-After": RETRY_FULL})
    return ApiError(f"Triton refused the request: {error}", None, status=502, type="server_error",
                    code="triton_error")


class Triton:
    """The client of one gateway process: Triton's HTTP endpoint at `address` (host:port)."""

    def __init__(self, address: str, model: Model, path: str):
        self.loopback = Loopback.at(address)
        self.model = model
        self.path = path

    async def ready(self) -> bool:
        return (await self.loopback.status("/v2/health/ready") == 200
                and await self.loopback.status(f"/v2/models/{self.target}/ready") == 200)

    @property
    def target(self) -> str:
        return "tensorrt_llm" if self.path == "direct" else "ensemble"

    def inputs(self, job: Generation, prompt_ids: list[int]) -> dict[str, list]:
        if self.path == "direct":
            inputs = {"input_ids": prompt_ids, "input_lengths": [len(prompt_ids)],
                      "request_output_len": [job.max_tokens], "end_id": [self.model.end_ids[0]],
                      "pad_id": [self.model.pad_id], "streaming": [True], **sampling(job, DIRECT_SAMPLING)}
            # The backends take one end_id; the model's other end ids stop it as one-token stop words,
            # unless the client asked to run past them (ignore_eos), as vLLM then drops them too.
            stops = [] if job.ignore_eos else list(self.model.end_ids[1:])
            stops += [i for i in job.stop_token_ids if i not in stops]
            if stops:
                inputs["stop_words_list"] = word_list(stops)
            if job.guide:
                inputs["guided_decoding_guide_type"], inputs["guided_decoding_guide"] = [job.guide[0]], [job.guide[1]]
            if job.logprobs:
                inputs["return_log_probs"] = [True]
            if job.top_logprobs:
                inputs["num_top_log_probs"] = [job.top_logprobs]
            if job.n > 1:
                inputs["num_return_sequences"] = [job.n]
            return inputs
        # The chat template is applied here, so the ensemble gets the whole rendered prompt as text.
        return {"text_input": [self.model.tokenizer.decode(prompt_ids)], "max_tokens": [job.max_tokens],
                "stream": [True], **sampling(job, ENSEMBLE_SAMPLING)}

    async def pieces(self, job: Generation, prompt_ids: list[int],
                     answers: list[Answer]) -> AsyncIterator[tuple[int, str]]:
        """(choice index, text) as the answers stream: one answer per choice (`n`, num_return_sequences).
        Leaving early (a stop sequence, a client gone, an error) cancels the Triton request: the caller
        must close this generator (contextlib.aclosing)."""
        stream = self.loopback.stream(self.target, self.inputs(job, prompt_ids))
        try:
            if self.path == "direct":
                async for item in self.decode(stream, answers, set(job.stop_token_ids), job.top_logprobs):
                    yield item
            else:
                async for piece in self.texts(stream, answers[0]):
                    yield 0, piece
        except ModelError as error:
            raise triton_error(error, stream) from None
        finally:
            # A no-op once the stream has ended; otherwise Triton sees a cancelled request.
            stream.cancel()

    async def decode(self, stream: Stream, answers: list[Answer], stop_ids: set[int],
                     top: int) -> AsyncIterator[tuple[int, str]]:
        """One piece per Triton response, "" included, so the first comes with the first token. Each
        response is one sequence's, named by its sequence_index where there are several. A stop token
        id ends its answer and, as in vLLM, its text is not part of it (it is counted); the request is
        cancelled once every answer has ended so."""
        texts = [StreamedText(self.model.fast, self.model.skip_special_tokens) for _ in answers]
        async for event in stream.responses():
            index = sequence_index(event, len(answers))
            answer, ids = answers[index], token_ids(event)
            if answer.stopped:
                continue
            answer.ids += ids
            if answer.logprobs is not None:
                answer.logprobs += of_event(event, ids, top)
            answer.completion_tokens += len(ids)
            cut = next((i for i, token in enumerate(ids) if token in stop_ids), None)
            yield index, texts[index].add(ids if cut is None else ids[:cut])
            if cut is not None:
                answer.stopped = True
                if all(each.stopped for each in answers):
                    break
        for index, text in enumerate(texts):
            tail = text.tail(self.model.fast.decode(text.ids, skip_special_tokens=self.model.skip_special_tokens))
            if tail:
                yield index, tail

    async def texts(self, stream: Stream, answer: Answer) -> AsyncIterator[str]:
        """The ensemble streams text pieces; tokens are counted by encoding the text (close, not exact).
        A running count, where asked for, encodes each piece (cheaper than the whole so far each time);
        the whole answer's count settles it at the end."""
        whole = []
        try:
            async for event in stream.responses():
                piece = "".join(values(event, "text_output"))
                whole.append(piece)
                if answer.running_count and piece:
                    answer.completion_tokens += len(self.model.fast.encode(piece, add_special_tokens=False).ids)
                yield piece
        finally:  # also when a stop sequence ended the answer early
            answer.completion_tokens = len(self.model.fast.encode("".join(whole), add_special_tokens=False).ids)
