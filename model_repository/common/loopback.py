"""Calls to the models of a tritonserver through its HTTP endpoint: the ensemble's loopback to its
own server, and the OpenAI gateway's calls to the Triton of its pod.

Why not BLS: in the python backend, decoupled BLS responses are read with a blocking iterator, one
thread per stream. Under a fast engine the stub deadlocks (a thread woken in
`ResponseIterator::Next` re-takes the GIL while holding the iterator's mutex; a thread starting a
BLS call holds the GIL and waits for the iterator map's mutex, which the message thread holds while
it waits for the iterator's mutex: python_backend src/pb_response_iterator.cc:84-88 and src/pb_stub.cc,
still so at r26.07, whose #439 fixed a different decoupled-BLS deadlock), and a BLS request cannot
be cancelled before python_backend #398
(2025-04, after the 24.10 release this project runs locally).

Why HTTP and not gRPC: reading a stream is what this process does per token, and grpcio's asyncio
receive path cost ~145 µs of CPU per streamed token here, against ~57 for reading Triton's
`generate_stream` server-sent events with a plain asyncio protocol (same stand-in engine, same
run; tools/bench.py --ceiling measures the whole ensemble). Each call is one HTTP/1.1 request on a
connection of its own, so closing the connection is how a call is cancelled: Triton's HTTP frontend
cancels a request whose client went away, and the C++ backend's cancellation check and our CPU
model see it, but only once the call's first response has been written (the connection is paused
until then), so the calls that must be cancellable are streamed. It needs nothing beyond the
standard library in the serving image.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator

import numpy as np
from utf8_text import decode_text

DATATYPES = {
    np.dtype(np.bool_): "BOOL", np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64",
    np.dtype(np.uint64): "UINT64", np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
}


class ModelError(RuntimeError):
    """A model refused the request or failed; the message is the model's own."""


class Refused(ModelError):
    """tritonserver took no new connection: it refuses them from the moment it starts shutting down
    (its HTTP frontend closes each one unanswered, then stops listening), so this call can never run
    here, and one made on another replica can."""

    def __init__(self, what: str):
        super().__init__(f"tritonserver is shutting down: it refused the loopback connection for {what}; "
                         "retry on another replica")


def is_text(array: np.ndarray) -> bool:
    return array.dtype == np.object_ or array.dtype.kind == "S"


def json_values(label: str, array: np.ndarray) -> list:
    """The array's elements, flat, as JSON takes them: BYTES as text (NotUtf8, naming `label`, if not UTF-8)."""
    values = array.reshape(-1).tolist()
    return [decode_text(value, label) for value in values] if is_text(array) else values


def infer_tensor(name: str, array: np.ndarray, label: str) -> dict:
    """One input of a KServe v2 JSON infer request; `label` is what an error calls it."""
    datatype = "BYTES" if is_text(array) else DATATYPES[array.dtype]
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": json_values(label, array)}


def values(event: dict, name: str) -> list:
    """An output of a generate_stream event, [] if it has none: Triton writes a one-element tensor as a
    bare value."""
    value = event.get(name, [])
    return value if isinstance(value, list) else [value]


def token_ids(event: dict) -> list[int]:
    """The token ids one tensorrt_llm response carries (output_ids up to its sequence_length)."""
    ids, lengths = values(event, "output_ids"), values(event, "sequence_length")
    return ids[:lengths[0]] if lengths else ids


class Exchange(asyncio.Protocol):
    """One HTTP/1.1 request and its response, read as it arrives: the status, then the body
    (chunked or Content-Length) split into server-sent events, or whole."""

    def __init__(self, request: bytes, events: bool):
        self.request = request
        self.split_events = events
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.status = 0
        self.chunked = False
        self.length: int | None = None
        self.body = bytearray()
        self.events: deque[bytes] = deque()
        self.complete = False
        self.lost = False
        self.answered = False  # any byte of a response came
        self.waiter: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.answered = True
        self.buffer += data
        if not self.status and not self.read_head():
            return
        self.read_body()
        if self.split_events and b"\n\n" in self.body:
            *events, rest = bytes(self.body).split(b"\n\n")
            self.events.extend(events)
            self.body = bytearray(rest)
        if self.complete and self.transport is not None:
            self.transport.close()
        self.wake()

    def read_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[:end + 4]
        self.status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        self.length = int(headers["content-length"]) if "content-length" in headers else None
        return True

    def read_body(self) -> None:
        if not self.chunked:
            self.body += self.buffer
            self.buffer.clear()
            self.complete = self.length is not None and len(self.body) >= self.length
            return
        while True:
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(self.buffer[:line_end]).split(b";")[0], 16)
            if size == 0:
                self.complete = True
                return
            if len(self.buffer) < line_end + 2 + size + 2:
                return
            self.body += self.buffer[line_end + 2:line_end + 2 + size]
            del self.buffer[:line_end + 2 + size + 2]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter
        self.waiter = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def error_of(body: bytes) -> str:
    """The message of Triton's error body: {"error": ...}, bare or as a server-sent event."""
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("data:"):
        text = text[5:].strip()
    try:
        return str(json.loads(text).get("error", text))
    except (ValueError, AttributeError):
        return text or "no message"


class Stream:
    """One request to a decoupled model over generate_stream, its events as they come; `cancel()`
    closes its connection, which cancels it in Triton."""

    def __init__(self, loopback: Loopback, path: str, body: bytes):
        self.loopback = loopback
        self.path = path
        self.body = body
        self.exchange: Exchange | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.exchange is not None:
            self.exchange.close()

    async def responses(self) -> AsyncIterator[dict]:
        if self.cancelled:
            raise ModelError("request cancelled")
        exchange = self.exchange = await self.loopback.open(self.path, self.body, events=True)
        try:
            while True:
                while exchange.events:
                    if self.cancelled:
                        raise ModelError("request cancelled")
                    event = exchange.events.popleft()
                    if exchange.status != 200:
                        raise ModelError(error_of(event))
                    if event.startswith(b"data: "):
                        parsed = json.loads(event[6:])
                        if "error" in parsed:
                            raise ModelError(str(parsed["error"]))
                        yield parsed
                if self.cancelled:
                    raise ModelError("request cancelled")
                if exchange.complete:
                    if exchange.status != 200:
                        raise ModelError(error_of(bytes(exchange.body)))
                    return
                if exchange.lost:
                    if not exchange.answered:
                        raise Refused(self.path)
                    raise ModelError("tritonserver closed the loopback connection before the response ended")
                await exchange.wait()
        finally:
            exchange.close()


class Loopback:
    """Requests to a tritonserver's HTTP endpoint; use it from one event loop."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    @classmethod
    def at(cls, address: str) -> Loopback:
        """From "host:port"."""
        host, _, port = address.rpartition(":")
        return cls(host, int(port))

    def request(self, method: str, path: str, body: bytes) -> bytes:
        return (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def open(self, path: str, body: bytes, events: bool, method: str = "POST") -> Exchange:
        exchange = Exchange(self.request(method, path, body), events)
        try:
            await asyncio.get_running_loop().create_connection(lambda: exchange, self.host, self.port)
        except ConnectionRefusedError:
            raise Refused(path) from None
        except OSError as error:
            raise ModelError(f"cannot reach this server's HTTP endpoint at {self.host}:{self.port}: {error}") from None
        return exchange

    async def whole(self, path: str, body: bytes, method: str = "POST") -> Exchange:
        """One request and its whole response: the exchange once it is complete, or lost on the way
        (Refused where nothing of a response came)."""
        exchange = await self.open(path, body, events=False, method=method)
        try:
            while not exchange.complete and not exchange.lost:
                await exchange.wait()
        finally:
            exchange.close()
        if not exchange.answered:
            raise Refused(path)
        return exchange

    async def status(self, path: str) -> int:
        """The HTTP status of a GET (Triton's health and readiness endpoints); 0 if nothing answers."""
        try:
            return (await self.whole(path, b"", method="GET")).status
        except ModelError:
            return 0

    async def refuses(self) -> bool:
        """Whether tritonserver refuses new connections now, which it does once it is shutting down."""
        try:
            await self.whole("/v2/health/live", b"", method="GET")
        except Refused:
            return True
        except ModelError:
            return False
        return False

    async def infer(self, model: str, inputs: list[dict], outputs: list[str]) -> dict[str, dict]:
        """A non-decoupled model's one response, as {output name: {"shape", "datatype", "data"}}."""
        body = json.dumps({"inputs": inputs, "outputs": [{"name": name} for name in outputs]}).encode()
        exchange = await self.whole(f"/v2/models/{model}/infer", body)
        if not exchange.complete:
            raise ModelError(f"tritonserver closed the loopback connection before {model} answered")
        if exchange.status != 200:
            raise ModelError(error_of(bytes(exchange.body)))
        return {output["name"]: output for output in json.loads(bytes(exchange.body))["outputs"]}

    def stream(self, model: str, inputs: dict[str, list]) -> Stream:
        """A decoupled model's responses; `inputs` maps each input to its elements, flat."""
        return Stream(self, f"/v2/models/{model}/generate_stream", json.dumps(inputs).encode())
