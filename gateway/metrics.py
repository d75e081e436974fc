"""The gateway's Prometheus metrics: what clients asked, what they got, and how fast as they saw it.

`GET /metrics` on the gateway's own port; the PodMonitoring scrapes it, the Ingress never routes it
(tools/policy/gateway.py). Names follow vLLM's (`vllm:time_to_first_token_seconds`, ...) with the
prefix `gateway_` and the unit in the name. Every series about a request carries `api_key`: the name
of the key that let it in (a key name of the mounted Secret, never the key), "anonymous" when no
keys are configured, "unauthenticated" on a 401, so its values are as few as the Secret's keys.

Triton's and the ensemble's metrics (port 8002) start when Triton has the request; these start when
the client's request arrives, so they also see what never reaches Triton (refusals, the 429s of
admission, the 503s of a Triton that is down) and the time spent here (tokenizing, the chat template).

uvicorn --workers N runs N processes, each with its own counters: with PROMETHEUS_MULTIPROC_DIR set
before prometheus_client is imported (gateway/__main__.py sets it for several workers; the pod sets
it to a memory-backed emptyDir) each process writes its values to files there, and whichever
worker answers a scrape adds up every process's files. Without it (one worker) the values live in
the process.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import validation

if TYPE_CHECKING:
    from gateway.triton import Answer

Piece = TypeVar("Piece")  # what a generation hands on to be written, timed as a chunk
ENV = "PROMETHEUS_MULTIPROC_DIR"
# Read when prometheus_client is imported (above), which is when it chooses between values in this
# process and values in files: the exposition below must read them from the same place.
MULTIPROCESS_DIR = os.environ.get(ENV)
PATH = "/metrics"
UNAUTHENTICATED = "unauthenticated"
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")
ROUTES = (*GENERATION_ROUTES, "/v1/models")
MODEL_ROUTE = "/v1/models/{model}"
OTHER = "other"  # an unknown path or parameter name: what a client sends must not become a label value
# The names a refusal's `param` may start with (`messages[2].content` counts as `messages`).
PARAMETERS = validation.CHAT | validation.COMPLETION | set(validation.UNSUPPORTED)
# Seconds. Time to first token as a client sees it includes queueing in Triton, so it reaches from a
# few milliseconds (a short prompt on an idle GPU) to minutes (a long queue); the load balancer cuts
# a stream at 570 s (gitops/components/tls-ingress/backendconfig.yaml), so nothing waits longer.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
                160.0, 320.0, 640.0)
# Between chunks: ~10-50 ms on a GPU, ~250 ms on the CPU runtime, seconds when a client reads slowly.
ITL_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
               1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0,
               360.0, 480.0, 600.0)

# Counters and histograms would each carry a `_created` series too: twice the samples Managed
# Prometheus bills for, saying only when a worker started (the multiprocess exposition has none anyway).
prometheus_client.disable_created_metrics()


def route(path: str) -> str:
    """The route template a path matched: a bounded label, whatever paths clients try."""
    if path in ROUTES:
        return path
    return MODEL_ROUTE if path.startswith("/v1/models/") else OTHER


def parameter(param: str) -> str:
    """The request parameter a refusal names, as a label: its top-level name when it is one this
    server knows (`messages[2].tool_calls` is `messages`), else "other" (an unknown key's name is the client's)."""
    name = re.split(r"[.\[]", param, maxsplit=1)[0]
    return name if name in PARAMETERS else OTHER


class Metrics:
    """The gateway's series, in one registry per app (several apps in one process, as in tests, do not clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        key = ["api_key"]

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        def histogram(name: str, doc: str, labels: list[str], buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

        def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
            # livesum: the sum over the worker processes alive now (a dead worker's requests are gone)
            return Gauge(name, doc, labels, multiprocess_mode="livesum", registry=self.registry)

        self.requests = counter("gateway_requests_total", "Requests answered, by route template and HTTP status "
                                "(health checks and scrapes not counted)", ["route", "status", *key])
        self.refused = counter("gateway_refused_parameters_total", "Requests refused (4xx) naming a request "
                               "parameter, by its top-level name and the error code", ["param", "code", *key])
        self.ttft = histogram("gateway_time_to_first_token_seconds", "Streams: from the request's arrival to its "
                              "first event, which is written with the first token", key, TTFT_BUCKETS)
        self.itl = histogram("gateway_inter_token_latency_seconds", "Streams: between two chunks of text as they "
                             "are written to the client", key, ITL_BUCKETS)
        self.e2e = histogram("gateway_e2e_request_latency_seconds", "Generation requests answered 200: from "
                             "arrival to the last byte written", ["route", *key], E2E_BUCKETS)
        self.in_flight = gauge("gateway_requests_in_flight", "Generation requests admitted and not yet answered "
                               "to the end (waiting ones included)", key)
        # triton_model: the Triton model the gateway calls (tensorrt_llm on the direct path, ensemble on the
        # ensemble path). The HPA's series (gitops/components/monitoring/rules.yaml) adds only the direct
        # path's: a request sent to the ensemble is counted there, by the ensemble's own waiting gauge.
        self.waiting = gauge("gateway_requests_waiting", "Generation requests admitted whose first token has not "
                             "come yet (tokenizing, queued in Triton, prefill), by the Triton model called",
                             [*key, "triton_model"])
        self.in_flight_limit = gauge("gateway_requests_in_flight_limit", "The admission bound: generation "
                                     "requests in flight beyond which requests get a 429, summed over workers", [])
        self.prompt_tokens = counter("gateway_prompt_tokens_total", "Prompt tokens of requests the engine "
                                     "answered", key)
        self.generation_tokens = counter("gateway_generation_tokens_total", "Tokens generated for requests, "
                                         "cancelled ones included", key)

    def endpoint(self, _request: Request) -> Response:
        # A plain function: Starlette runs it on its thread pool, so reading the files blocks no stream.
        # The classic text format's type (what generate_latest writes), which every Prometheus parses.
        return Response(self.exposition(), media_type=prometheus_client.CONTENT_TYPE_PLAIN_0_0_4)

    def exposition(self) -> bytes:
        if MULTIPROCESS_DIR is None:
            return prometheus_client.generate_latest(self.registry)
        return collect(Path(MULTIPROCESS_DIR))


def collect(folder: Path) -> bytes:
    """Every process's values in `folder`, added up; the gauges of processes that are gone are left out."""
    forget_dead_processes(folder)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(folder))
    return prometheus_client.generate_latest(registry)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, but alive
        return True
    return True


def forget_dead_processes(folder: Path) -> None:
    """Drop the live gauges of worker processes that died (killed, out of memory): uvicorn's supervisor
    starts another in their place but tells no one, so a dead worker's requests in flight would
    otherwise count forever. Checked at each scrape, since no code of ours runs when a worker is killed;
    uvicorn's supervisor reaps its dead workers, so a pid that answers is a running process."""
    for file in folder.glob("gauge_live*_*.db"):
        pid = int(file.stem.rpartition("_")[2])
        if not alive(pid):
            with contextlib.suppress(FileNotFoundError):  # another worker's scrape removed it first
                multiprocess.mark_process_dead(pid, str(folder))


def prepare_directory(workers: int) -> Path | None:
    """Before uvicorn starts: the folder the worker processes share their values in, emptied of a
    previous run's files (a container restart keeps its emptyDir), or a new one for several workers
    when none is given (removed at exit). None: one process, values in memory."""
    given = os.environ.get(ENV)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        return folder
    if workers <= 1:
        return None
    folder = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    atexit.register(shutil.rmtree, folder, True)
    os.environ[ENV] = str(folder)  # the workers are new processes (spawned): they import prometheus_client with it
    return folder


@dataclass
class Exchange:
    """One request as the metrics see it, from its arrival to its last byte (Observe keeps it in the
    request's scope state; the route marks what only it knows: admitted, each chunk of text, the tokens)."""

    metrics: Metrics
    state: dict  # the request's scope["state"], where admission puts the key name
    arrived: float
    key: str | None = None  # set when admitted, so the gauges go down under the label they went up under
    triton_model: str = ""  # the model the route calls, set when admitted
    waiting: bool = False
    last_chunk: float | None = None
    gaps: Histogram | None = None  # the ITL series of this request's key, looked up once: it is per token
    prompt_tokens: int = 0
    answers: list[Answer] | None = None

    @property
    def api_key(self) -> str:
        return self.state.get("api_key_name", UNAUTHENTICATED)

    def admitted(self, triton_model: str) -> Exchange:
        """A generation request the route handles, calling `triton_model`: in flight, and waiting for its
        first token."""
        self.key, self.triton_model = self.api_key, triton_model
        self.metrics.in_flight.labels(self.key).inc()
        self.metrics.waiting.labels(self.key, triton_model).inc()
        self.waiting = True
        return self

    def generating(self, prompt_tokens: int, answers: list[Answer]) -> None:
        """The request went to the engine: its tokens (every choice's) are counted when it ends, however it ends."""
        self.prompt_tokens, self.answers = prompt_tokens, answers

    async def timed(self, texts: AsyncIterator[Piece], stream: bool) -> AsyncIterator[Piece]:
        """`texts` (the first comes with the first token, the others are chunks of an answer's text), timed as
        each is handed on to be written: time to first token and between chunks, for streams (a whole
        answer's client sees only its end, which the e2e latency times)."""
        async with contextlib.aclosing(texts):
            async for text in texts:
                self.chunk(stream)
                yield text

    def chunk(self, stream: bool) -> None:
        now = time.monotonic()
        if self.last_chunk is None:
            self.stop_waiting()
            if stream:
                self.metrics.ttft.labels(self.api_key).observe(now - self.arrived)
                self.gaps = self.metrics.itl.labels(self.api_key)
        elif self.gaps is not None:
            self.gaps.observe(now - self.last_chunk)
        self.last_chunk = now

    def stop_waiting(self) -> None:
        if self.waiting:
            self.metrics.waiting.labels(self.key, self.triton_model).dec()
            self.waiting = False

    def refused(self, body: bytes) -> None:
        """A 4xx answer in OpenAI's error shape that names a parameter counts under that parameter."""
        try:
            error = json.loads(body)["error"]
            param, code = error["param"], error["code"]
        except (ValueError, KeyError, TypeError):
            return
        if isinstance(param, str):
            self.metrics.refused.labels(parameter(param), str(code), self.api_key).inc()

    def finish(self, path: str, status: int) -> None:
        template, key = route(path), self.api_key
        self.metrics.requests.labels(template, str(status), key).inc()
        if template in GENERATION_ROUTES and status == 200:
            self.metrics.e2e.labels(template, key).observe(time.monotonic() - self.arrived)
        if self.answers is not None and self.last_chunk is not None:  # the engine answered
            self.metrics.prompt_tokens.labels(key).inc(self.prompt_tokens)
            self.metrics.generation_tokens.labels(key).inc(sum(answer.completion_tokens for answer in self.answers))
        if self.key is not None:
            self.stop_waiting()
            self.metrics.in_flight.labels(self.key).dec()


def exchange(request: Request) -> Exchange:
    return request.state.exchange


class Observe:
    """ASGI middleware, outside admission so its refusals count too: every request but `skip` (health
    checks, the scrape itself) is counted by route, status and key once its last byte is sent (or the
    client went away), and a 4xx that names a parameter counts under it."""

    def __init__(self, app: ASGIApp, metrics: Metrics, skip: tuple[str, ...]):
        self.app, self.metrics, self.skip = app, metrics, skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["exchange"] = exchange = Exchange(self.metrics, state, time.monotonic())
        status, error_body = 500, b""  # 500: what the server answers when the app fails before a response

        async def observed(message: Message) -> None:
            nonlocal status, error_body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and 400 <= status < 500:
                error_body += message.get("body", b"")  # an error object: small, and whole in one message
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            if error_body:
                exchange.refused(error_body)
            exchange.finish(scope["path"], status)
