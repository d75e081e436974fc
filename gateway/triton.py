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
from gateway.repository import Model
from gateway.validation import Generation


@dataclass
class Answer:
    """What one request produced so far: counted as it streams, for usage and finish_reason."""

    ids: list[int]
    completion_tokens: int = 0


def sampling(job: Generation, names: dict[str, str]) -> dict[str, list]:
    """OpenAI's sampling in TensorRT-LLM's terms; `names` maps ours to the model's input names."""
    chosen: dict[str, list] = {"presence_penalty": [job.presence_penalty], "frequency_penalty": [job.frequency_penalty]}
    if job.greedy:
        chosen["top_k"] = [1]
    else:
        chosen["temperature"] = [job.temperature]
        # top_k 0 with top_p 0 is greedy on TensorRT-LLM; OpenAI's top_p 1 means the whole distribution.
        chosen["top_p"] = [job.top_p]
    if job.seed is not None:
        chosen["seed"] = [job.seed]
    return {names[key]: value for key, value in chosen.items()}


DIRECT_SAMPLING = {"presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
                   "top_k": "runtime_top_k", "temperature": "temperature", "top_p": "runtime_top_p", "seed": "seed"}
ENSEMBLE_SAMPLING = {name: name for name in DIRECT_SAMPLING} | {"seed": "random_seed"}


def end_word_list(end_ids: tuple[int, ...]) -> list[int]:
    """The end ids after the first as one-token stop words, as preprocessing sends them (a [2, N] word
    list, flat: the ids, then their end offsets): the backends take one end_id."""
    others = list(end_ids[1:]) or [0]
    offsets = list(range(1, len(end_ids))) or [-1]
    return others + offsets


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
            if len(self.model.end_ids) > 1:
                inputs["stop_words_list"] = end_word_list(self.model.end_ids)
            return inputs
        # The chat template is applied here, so the ensemble gets the whole rendered prompt as text.
        return {"text_input": [self.model.tokenizer.decode(prompt_ids)], "max_tokens": [job.max_tokens],
                "stream": [True], **sampling(job, ENSEMBLE_SAMPLING)}

    async def pieces(self, job: Generation, prompt_ids: list[int], answer: Answer) -> AsyncIterator[str]:
        """The answer's text as it streams. Leaving early (a stop sequence, a client gone, an error)
        cancels the Triton request: the caller must close this generator (contextlib.aclosing)."""
        stream = self.loopback.stream(self.target, self.inputs(job, prompt_ids))
        try:
            if self.path == "direct":
                async for piece in self.decode(stream, answer):
                    yield piece
            else:
                async for piece in self.texts(stream, answer):
                    yield piece
        except ModelError as error:
            raise ApiError(f"Triton refused the request: {error}", None, status=502,
                           type="server_error", code="triton_error") from None
        finally:
            # A no-op once the stream has ended; otherwise Triton sees a cancelled request.
            stream.cancel()

    async def decode(self, stream: Stream, answer: Answer) -> AsyncIterator[str]:
        text = StreamedText(self.model.fast, self.model.skip_special_tokens)
        async for event in stream.responses():
            ids = token_ids(event)
            answer.ids += ids
            answer.completion_tokens += len(ids)
            piece = text.add(ids)
            if piece:
                yield piece
        tail = text.tail(self.model.fast.decode(text.ids, skip_special_tokens=self.model.skip_special_tokens))
        if tail:
            yield tail

    async def texts(self, stream: Stream, answer: Answer) -> AsyncIterator[str]:
        """The ensemble streams text pieces; tokens are counted by encoding the text (close, not exact)."""
        whole = []
        try:
            async for event in stream.responses():
                piece = "".join(values(event, "text_output"))
                whole.append(piece)
                if piece:
                    yield piece
        finally:  # also when a stop sequence ended the answer early
            answer.completion_tokens = len(self.model.fast.encode("".join(whole), add_special_tokens=False).ids)
