"""What the gateway lets in before any work is done: API keys, a body cap, and a bound on requests in flight.

One ASGI middleware in front of the routes, so a refusal costs no JSON parsing, tokenizing or Triton call:
  * API keys (optional): one file per key name in a directory, as a Kubernetes Secret volume lays
    out its keys; `Authorization: Bearer <key>` must match one, compared in constant time. The
    matched name goes to `request.state.api_key_name` ("anonymous" with no keys configured).
  * A body cap: 413 from Content-Length, or as a chunked body grows past it.
  * A bound on generation requests in flight per worker process: beyond it a 429 with Retry-After
    at once, never a wait in a queue nobody can see. A stream counts until its last event is sent.
Health endpoints and the metrics are never refused: the kubelet, the load balancer and Managed
Prometheus carry no key and must see an overloaded gateway as alive, ready and measured. The Ingress
routes only /v1 and /health here, so /metrics is reached only inside the cluster (NetworkPolicy).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import metrics
from gateway.errors import ApiError

log = logging.getLogger("gateway")

OPEN_PATHS = ("/health", "/health/ready", "/health/live", metrics.PATH)
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
ANONYMOUS = "anonymous"
DEFAULT_MAX_BODY_BYTES = 1 << 20
# Requests in flight the whole server takes per row of the engine's batch: one batch running and one
# waiting in Triton's queue to fill each row as it frees. More would only wait longer in that queue
# (the client's latency grows, its answer does not come sooner); fewer would leave rows idle between steps.
IN_FLIGHT_PER_BATCH_ROW = 2
# How often the keys folder is looked at again: a Secret's change reaches its volume within the kubelet's
# sync period (about a minute) anyway, and a stat per request would cost every request.
KEYS_REFRESH_SECONDS = 10.0
# A shed request is retried after a decode step or few free some rows: a second is many steps.
RETRY_SHED = "1"


class KeysError(RuntimeError):
    """The API keys directory holds something that cannot be a key."""


def default_max_in_flight(max_batch_size: int, workers: int) -> int:
    """Per worker process: the server's share of IN_FLIGHT_PER_BATCH_ROW * max_batch_size, at least 1."""
    return max(1, math.ceil(IN_FLIGHT_PER_BATCH_ROW * max_batch_size / max(1, workers)))


def load_keys(directory: Path | None) -> dict[str, bytes]:
    """{name: key} from one file per key name; {} when no directory is given or it does not exist (the
    Secret is optional, so a pod without it starts, open as before, behind IAP)."""
    if directory is None or not Path(directory).is_dir():
        return {}
    keys = {}
    # A Secret volume also holds `..data` and `..<timestamp>` entries (its atomic-update links): skip dotfiles.
    for path in sorted(Path(directory).iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        key = path.read_bytes().strip()
        if not key:
            raise KeysError(f"API key {path.name} ({path}) is empty")
        if any(byte <= 0x20 or byte >= 0x7f for byte in key):
            raise KeysError(f"API key {path.name} ({path}) has whitespace or non-ASCII bytes: an HTTP header "
                            "cannot carry it")
        keys[path.name] = key
    return keys


def match(keys: dict[str, bytes], given: bytes) -> str | None:
    """The name of the key `given` is, compared with every key in constant time (no early exit, so the
    time taken says nothing of which key, or how much of one, matched)."""
    found = None
    for name, key in keys.items():
        if hmac.compare_digest(key, given):
            found = name
    return found


def folder_version(directory: Path) -> tuple:
    """Changes when the folder's keys may have: a file added, removed or rewritten (a Secret volume
    swaps its `..data` link on every update, which changes where every key file leads)."""
    try:
        return tuple((entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                     for entry in sorted(os.scandir(directory), key=lambda entry: entry.name))
    except OSError:
        return ()


@dataclass(frozen=True)
class Limits:
    keys: dict[str, bytes]
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_in_flight: int = 16
    keys_dir: Path | None = None  # looked at again every KEYS_REFRESH_SECONDS: keys change without a restart


def _refusal(error: ApiError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(b"content-type", b"application/json")]
    headers += [(name.lower().encode(), value.encode()) for name, value in (error.headers or {}).items()]
    return error.status, headers, json.dumps(error.body()).encode()


def unauthorized(given: bool) -> ApiError:
    message = ("Incorrect API key provided. You can find your API key with whoever runs this gateway."
               if given else
               "You didn't provide an API key. You need to provide your API key in an Authorization header "
               "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    return ApiError(message, None, status=401, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def too_large(limit: int) -> ApiError:
    return ApiError(f"The request body is larger than this server takes ({limit} bytes).", None, status=413,
                    code="request_too_large")


def shed(limit: int) -> ApiError:
    return ApiError(f"This server is at its limit of {limit} requests in flight per worker; retry after "
                    f"{RETRY_SHED} s.", None, status=429, type="requests", code="rate_limit_exceeded",
                    headers={"Retry-After": RETRY_SHED})


class Admission:
    def __init__(self, app: ASGIApp, limits: Limits):
        self.app, self.limits = app, limits
        self.in_flight = 0
        self.keys = limits.keys
        self.keys_version = folder_version(limits.keys_dir) if limits.keys_dir else None
        self.keys_checked = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        name = self.authenticate(headers.get(b"authorization", b""))
        if name is None:
            await self.refuse(send, unauthorized(bool(headers.get(b"authorization"))))
            return
        scope.setdefault("state", {})["api_key_name"] = name
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limits.max_body_bytes:
            await self.refuse(send, too_large(self.limits.max_body_bytes))
            return
        if scope["path"] not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        # No await between the test and the increment: one event loop per worker, so this is atomic.
        if self.in_flight >= self.limits.max_in_flight:
            await self.refuse(send, shed(self.limits.max_in_flight))
            return
        self.in_flight += 1
        try:
            await self.capped(scope, receive, send)
        finally:
            self.in_flight -= 1

    def refresh_keys(self) -> None:
        """A Secret created, changed or deleted after the pod started takes effect within seconds."""
        now = time.monotonic()
        if self.limits.keys_dir is None or now - self.keys_checked < KEYS_REFRESH_SECONDS:
            return
        self.keys_checked = now
        version = folder_version(self.limits.keys_dir)
        if version == self.keys_version:
            return
        try:
            keys = load_keys(self.limits.keys_dir)
        except (KeysError, OSError) as error:  # keep the keys that worked rather than open the gateway
            log.error("gateway: API keys not reloaded, the previous %d stay: %s", len(self.keys), error)
            return
        self.keys, self.keys_version = keys, version
        log.warning("gateway: API keys reloaded from %s: %s", self.limits.keys_dir, ", ".join(keys) or "none, "
                    "so /v1 takes requests without a key")

    def authenticate(self, authorization: bytes) -> str | None:
        self.refresh_keys()
        if not self.keys:
            return ANONYMOUS
        scheme, _, key = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not key.strip():
            return None
        return match(self.keys, key.strip())

    async def capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, with a body that may not grow past the cap (a chunked body has no Content-Length):
        the route reading it gets the 413 as an ApiError, which the app answers like any other."""
        received = 0

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limits.max_body_bytes:
                    raise too_large(self.limits.max_body_bytes)
            return message

        await self.app(scope, counting, send)

    @staticmethod
    async def refuse(send: Send, error: ApiError) -> None:
        status, headers, body = _refusal(error)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
