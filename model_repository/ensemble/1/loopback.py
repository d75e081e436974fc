"""Calls to the other models of this tritonserver through its own gRPC endpoint (loopback).

Why not BLS: in the python backend, decoupled BLS responses are read with a blocking iterator, one
thread per stream. Under a fast engine the stub deadlocks (a thread woken in
`ResponseIterator::Next` re-takes the GIL while holding the iterator's mutex; a thread starting a
BLS call holds the GIL and waits for the iterator map's mutex, which the message thread holds while
it waits for the iterator's mutex: python_backend src/pb_response_iterator.cc and src/pb_stub.cc,
unchanged through 2026), and a BLS request cannot be cancelled before python_backend #398
(2025-04, after the 24.10 release this project runs locally). Over gRPC, one asyncio event loop
carries every stream, and cancelling a call cancels the request in Triton, where the C++ backend's
cancellation check and our CPU model see it.

Tensors travel as raw bytes both ways: no per-token tensor objects beyond what the protocol needs.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
from wire import SERVICE, ModelInferRequest, ModelInferResponse, ModelStreamInferResponse

DATATYPES = {
    np.dtype(np.bool_): "BOOL", np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64",
    np.dtype(np.uint64): "UINT64", np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
}
NUMPY_TYPES = {name: dtype for dtype, name in DATATYPES.items()}


class ModelError(RuntimeError):
    """A model refused the request or failed; the message is the model's own."""


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes

    def renamed(self, name: str) -> Tensor:
        return Tensor(name, self.datatype, self.shape, self.raw)


def serialize_bytes(array: np.ndarray) -> bytes:
    """Triton's BYTES wire format: each element as a 4-byte little-endian length, then its bytes."""
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        items.append(raw[offset:offset + length])
        offset += length
    return items


def from_numpy(name: str, array: np.ndarray) -> Tensor:
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return Tensor(name, "BYTES", array.shape, serialize_bytes(array))
    return Tensor(name, DATATYPES[array.dtype], array.shape, np.ascontiguousarray(array).tobytes())


class Outputs:
    """The output tensors of one response, by name."""

    def __init__(self, response: ModelInferResponse):
        self.response = response
        self.index = {output.name: i for i, output in enumerate(response.outputs)}

    def tensor(self, name: str) -> Tensor:
        i = self.index[name]
        output = self.response.outputs[i]
        return Tensor(name, output.datatype, tuple(output.shape), self.response.raw_output_contents[i])

    def ints(self, name: str) -> np.ndarray:
        i = self.index[name]
        return np.frombuffer(self.response.raw_output_contents[i], dtype=NUMPY_TYPES[self.response.outputs[i].datatype])

    def strings(self, name: str) -> list[bytes]:
        return deserialize_bytes(self.response.raw_output_contents[self.index[name]])


def infer_request(model: str, inputs: list[Tensor], outputs: list[str]) -> ModelInferRequest:
    request = ModelInferRequest(model_name=model)
    for tensor in inputs:
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        request.raw_input_contents.append(tensor.raw)
    for name in outputs:
        request.outputs.add(name=name)
    return request


class Stream:
    """One request to a decoupled model, its responses as they come; `cancel()` cancels it in Triton."""

    def __init__(self, call):
        self.call = call

    def cancel(self) -> None:
        self.call.cancel()

    async def responses(self) -> AsyncIterator[Outputs]:
        try:
            async for message in self.call:
                if message.error_message:
                    raise ModelError(message.error_message)
                response = message.infer_response
                if response.outputs:
                    yield Outputs(response)
                if response.parameters["triton_final_response"].bool_param:
                    return
        except grpc.aio.AioRpcError as error:
            raise ModelError(error.details() or str(error.code())) from None
        except asyncio.CancelledError:  # what reading a call raises once cancel() was called
            raise ModelError("request cancelled") from None


class Loopback:
    """A gRPC channel to this server; create it on the event loop that will use it."""

    def __init__(self, url: str):
        self.channel = grpc.aio.insecure_channel(url, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self.model_infer = self.channel.unary_unary(
            f"/{SERVICE}/ModelInfer", request_serializer=ModelInferRequest.SerializeToString,
            response_deserializer=ModelInferResponse.FromString)
        self.model_stream_infer = self.channel.stream_stream(
            f"/{SERVICE}/ModelStreamInfer", request_serializer=ModelInferRequest.SerializeToString,
            response_deserializer=ModelStreamInferResponse.FromString)

    async def infer(self, model: str, inputs: list[Tensor], outputs: list[str]) -> Outputs:
        try:
            return Outputs(await self.model_infer(infer_request(model, inputs, outputs)))
        except grpc.aio.AioRpcError as error:
            raise ModelError(error.details() or str(error.code())) from None

    def stream(self, model: str, inputs: list[Tensor], outputs: list[str]) -> Stream:
        request = infer_request(model, inputs, outputs)
        # Without it Triton sends a decoupled model's final flag on no response at all.
        request.parameters["triton_enable_empty_final_response"].bool_param = True
        return Stream(self.model_stream_infer(iter([request])))

    async def close(self) -> None:
        await self.channel.close()
