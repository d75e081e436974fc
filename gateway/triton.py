"""The Triton side: one streamed request per answer over tritonclient's asyncio gRPC client.

Two paths, chosen per repository (`--path`, default auto):
  * direct: token ids straight to `tensorrt_llm` (the cpu and engine runtimes). The gateway
    tokenizes and detokenizes itself, so the ensemble's python process is not on the path;
    bench.py --ceiling --gateway measures what that saves per streamed token (README).
  * ensemble: the rendered prompt as `text_input` to `ensemble`, text back (the llmapi runtime,
    whose `tensorrt_llm` takes text; or a build whose ensemble applies no chat template).
Either way Triton streams (`streaming`/`stream` true) also for non-streamed answers, so both are
made of the same pieces, and a stop sequence or a client that went away cancels the gRPC call,
which cancels the request in Triton and so in the engine.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aio

# model_repository/common, on the path from gateway/__init__.py
from streamed_text import StreamedText
from tritonclient.utils import InferenceServerException

from gateway.errors import ApiError
from gateway.repository import Model
from gateway.validation import Generation

TOKEN_OUTPUTS = [grpcclient.InferRequestedOutput("output_ids"), grpcclient.InferRequestedOutput("sequence_length")]
TEXT_OUTPUTS = [grpcclient.InferRequestedOutput("text_output")]


@dataclass
class Answer:
    """What one request produced so far: counted as it streams, for usage and finish_reason."""

    ids: list[int]
    completion_tokens: int = 0


def tensor(name: str, array: np.ndarray) -> grpcclient.InferInput:
    item = grpcclient.InferInput(name, list(array.shape), grpcclient.np_to_triton_dtype(array.dtype))
    item.set_data_from_numpy(array)
    return item


def sampling(job: Generation, names: dict[str, str]) -> list[grpcclient.InferInput]:
    """OpenAI's sampling in TensorRT-LLM's terms; `names` maps ours to the model's input names."""
    values: dict[str, np.ndarray] = {
        "presence_penalty": np.array([[job.presence_penalty]], dtype=np.float32),
        "frequency_penalty": np.array([[job.frequency_penalty]], dtype=np.float32),
    }
    if job.greedy:
        values["top_k"] = np.array([[1]], dtype=np.int32)
    else:
        values["temperature"] = np.array([[job.temperature]], dtype=np.float32)
        # top_k 0 with top_p 0 is greedy on TensorRT-LLM; OpenAI's top_p 1 means the whole distribution.
        values["top_p"] = np.array([[job.top_p]], dtype=np.float32)
    if job.seed is not None:
        values["seed"] = np.array([[job.seed]], dtype=np.uint64)
    return [tensor(names[key], value) for key, value in values.items()]


DIRECT_SAMPLING = {"presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
                   "top_k": "runtime_top_k", "temperature": "temperature", "top_p": "runtime_top_p", "seed": "seed"}
ENSEMBLE_SAMPLING = {name: name for name in DIRECT_SAMPLING} | {"seed": "random_seed"}


def end_word_list(end_ids: tuple[int, ...]) -> np.ndarray:
    """The end ids after the first as one-token stop words ([1, 2, N] word list), as preprocessing sends
    them: the backends take one end_id."""
    others = list(end_ids[1:]) or [0]
    offsets = list(range(1, len(end_ids))) or [-1]
    return np.array([[others, offsets]], dtype=np.int32)


class Triton:
    """The gRPC client of one gateway process; create it on the event loop that serves requests."""

    def __init__(self, url: str, model: Model, path: str):
        self.client = aio.InferenceServerClient(url)
        self.model = model
        self.path = path
        self.request_ids = itertools.count()

    async def close(self) -> None:
        await self.client.close()

    async def ready(self) -> bool:
        try:
            return await self.client.is_server_ready() and await self.client.is_model_ready(self.target)
        except InferenceServerException:
            return False

    @property
    def target(self) -> str:
        return "tensorrt_llm" if self.path == "direct" else "ensemble"

    def request(self, job: Generation, prompt_ids: list[int]) -> dict:
        request_id = f"gw-{next(self.request_ids)}"
        if self.path == "direct":
            inputs = [tensor("input_ids", np.array([prompt_ids], dtype=np.int32)),
                      tensor("input_lengths", np.array([[len(prompt_ids)]], dtype=np.int32)),
                      tensor("request_output_len", np.array([[job.max_tokens]], dtype=np.int32)),
                      tensor("end_id", np.array([[self.model.end_ids[0]]], dtype=np.int32)),
                      tensor("pad_id", np.array([[self.model.pad_id]], dtype=np.int32)),
                      tensor("streaming", np.array([[True]])),
                      *sampling(job, DIRECT_SAMPLING)]
            if len(self.model.end_ids) > 1:
                inputs.append(tensor("stop_words_list", end_word_list(self.model.end_ids)))
            outputs = TOKEN_OUTPUTS
        else:
            # The chat template is applied here, so the ensemble gets the whole rendered prompt as text.
            text = self.model.tokenizer.decode(prompt_ids)
            inputs = [tensor("text_input", np.array([[text.encode("utf-8")]], dtype=object)),
                      tensor("max_tokens", np.array([[job.max_tokens]], dtype=np.int32)),
                      tensor("stream", np.array([[True]])),
                      *sampling(job, ENSEMBLE_SAMPLING)]
            outputs = TEXT_OUTPUTS
        return {"model_name": self.target, "inputs": inputs, "outputs": outputs, "request_id": request_id}

    async def pieces(self, job: Generation, prompt_ids: list[int], answer: Answer) -> AsyncIterator[str]:
        """The answer's text as it streams. Leaving early (a stop sequence, a client gone, an error)
        cancels the Triton request: the caller must close this generator (contextlib.aclosing)."""
        request = self.request(job, prompt_ids)

        async def one_request() -> AsyncIterator[dict]:
            yield request

        call = self.client.stream_infer(one_request())
        try:
            if self.path == "direct":
                async for piece in self.decode(call, answer):
                    yield piece
            else:
                async for piece in self.texts(call, answer):
                    yield piece
        except InferenceServerException as error:
            raise ApiError(f"Triton refused the request: {error.message()}", None, status=502,
                           type="server_error", code="triton_error") from None
        finally:
            # A no-op once the call has ended; otherwise Triton sees a cancelled request.
            call.cancel()

    async def decode(self, call, answer: Answer) -> AsyncIterator[str]:
        text = StreamedText(self.model.fast, self.model.skip_special_tokens)
        async for result, output in _outputs(call, "output_ids"):
            length = int(result.as_numpy("sequence_length").reshape(-1)[0])
            ids = output.reshape(-1)[:length].tolist()
            answer.ids += ids
            answer.completion_tokens += len(ids)
            piece = text.add(ids)
            if piece:
                yield piece
        tail = text.tail(self.model.fast.decode(text.ids, skip_special_tokens=self.model.skip_special_tokens))
        if tail:
            yield tail

    async def texts(self, call, answer: Answer) -> AsyncIterator[str]:
        """The ensemble streams text pieces; tokens are counted by encoding the text (close, not exact)."""
        whole = []
        try:
            async for _, output in _outputs(call, "text_output"):
                piece = b"".join(output.reshape(-1)).decode("utf-8")
                whole.append(piece)
                if piece:
                    yield piece
        finally:  # also when a stop sequence ended the answer early
            answer.completion_tokens = len(self.model.fast.encode("".join(whole), add_special_tokens=False).ids)


async def _outputs(call, name: str) -> AsyncIterator[tuple[object, np.ndarray]]:
    """Each response of the stream that carries `name`, with it; an error response raises."""
    async for result, error in call:
        if error is not None:
            raise error
        output = result.as_numpy(name)
        if output is not None and output.size:
            yield result, output
