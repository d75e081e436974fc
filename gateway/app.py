"""The ASGI app: OpenAI's /v1/chat/completions, /v1/completions and /v1/models over Triton.

`create_app` is a factory (uvicorn --factory) that reads its settings from the environment, so
every worker process of `uvicorn --workers N` builds its own app and Triton client.

A stream's status line goes out with the engine's first token, not before Triton is called: until
then a failure (Triton unreachable or full, a refused request) is an HTTP status the client can
retry on, and a client timing its first chunk times the first token. Every response carries an
`x-request-id`, the client's own if it sent one.

gateway/admission.py refuses what must not reach the routes (a missing or wrong API key, an
oversized body, a request beyond the bound in flight) before any work. Chat templating and
tokenizing run on one thread beside the event loop: a long prompt's milliseconds there would
otherwise stall every stream the worker is sending. gateway/metrics.py counts every request on its
way in and out (`GET /metrics`); a generation request tells it when it was admitted, its chunks and its tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import admission, metrics, prompts, repository, tool_calls, validation
from gateway.errors import ApiError
from gateway.logprobs import Logprobs
from gateway.responses import DONE, Reply, event, usage
from gateway.stops import StopText
from gateway.triton import Answer, Triton, cannot_carry

log = logging.getLogger("gateway")
PATHS = ("auto", "direct", "ensemble")


@dataclass(frozen=True)
class Settings:
    repository: Path
    triton_url: str = "127.0.0.1:8000"  # Triton's HTTP address
    path: str = "auto"
    served_name: str | None = None
    api_keys_dir: Path | None = None  # one file per key name (a Secret volume); none there: no keys asked
    max_body_bytes: int = admission.DEFAULT_MAX_BODY_BYTES
    max_in_flight: int | None = None  # per worker; None: admission.default_max_in_flight for one worker

    ENV = {"repository": "GATEWAY_REPOSITORY", "triton_url": "GATEWAY_TRITON_HTTP", "path": "GATEWAY_PATH",
           "served_name": "GATEWAY_MODEL_NAME", "api_keys_dir": "GATEWAY_API_KEYS_DIR",
           "max_body_bytes": "GATEWAY_MAX_BODY_BYTES", "max_in_flight": "GATEWAY_MAX_IN_FLIGHT"}
    TYPES = {"repository": Path, "api_keys_dir": Path, "max_body_bytes": int, "max_in_flight": int}

    @classmethod
    def from_env(cls) -> Settings:
        if not os.environ.get(cls.ENV["repository"]):
            raise repository.RepositoryError(f"{cls.ENV['repository']} is not set: name the built model repository")
        values = {field: os.environ[env] for field, env in cls.ENV.items() if os.environ.get(env)}
        return cls(**{field: cls.TYPES.get(field, str)(value) for field, value in values.items()})

    def environment(self) -> dict[str, str]:
        return {env: str(getattr(self, field)) for field, env in self.ENV.items() if getattr(self, field)}


def choose_path(model: repository.Model, wanted: str) -> str:
    """direct when tensorrt_llm takes token ids; the ensemble when it takes text (llmapi)."""
    if wanted not in PATHS:
        raise repository.RepositoryError(f"path {wanted!r} is not one of {', '.join(PATHS)}")
    if wanted == "direct" and not model.token_ids:
        raise repository.RepositoryError("path direct needs a tensorrt_llm that takes token ids; this repository's "
                                         "takes text (llmapi): use the ensemble path")
    if wanted == "ensemble" and model.ensemble_templates:
        raise repository.RepositoryError("path ensemble: this repository's ensemble applies the chat template "
                                         "itself, so the gateway's rendered prompt would be templated twice; "
                                         "build with --no-chat-template or use the direct path")
    if wanted == "auto":
        return "direct" if model.token_ids else "ensemble"
    return wanted


def serving(model: repository.Model, path: str) -> tuple[validation.Serving, list[str]]:
    """What requests may ask of this repository on this path, and warnings for the recommended sampling
    it cannot apply; RepositoryError for a recommendation no request could carry."""
    cannot = cannot_carry(model, path)
    try:
        defaults, warnings = validation.recommended(model.generation_config, cannot, model.max_output_len)
    except ValueError as error:
        raise repository.RepositoryError(str(error)) from None
    can, lacks = model.capabilities, model.capabilities.get("missing") or "this build's tensorrt_llm has no such input"
    if path != "direct":
        can, lacks = {}, "the ensemble path's models take no guided-decoding or log-probability input"
    return validation.Serving(
        model.max_output_len, model.fast.get_vocab_size(True), defaults, cannot,
        unguided=None if "json_schema" in can.get("guide_types", ()) else lacks,
        no_logprobs=None if can.get("log_probs") else lacks, max_top_logprobs=can.get("top_log_probs", 0),
        no_sequences=None if can.get("return_sequences") else lacks, max_sequences=model.max_batch_size), warnings


def finish_reason(job: validation.Generation, answer: Answer, stop: StopText, model: repository.Model) -> str:
    if stop.hit or answer.stopped:
        return "stop"
    ended = not job.ignore_eos and bool(answer.ids) and answer.ids[-1] in model.end_ids
    return "length" if answer.completion_tokens >= job.max_tokens and not ended else "stop"


async def answer_text(triton: Triton, job: validation.Generation, ids: list[int], answers: list[Answer],
                      stops: list[StopText]) -> AsyncIterator[tuple[int, str]]:
    """(choice index, text) of each answer as it may be sent: cut before a stop sequence; once every
    answer has met one, the Triton request is cancelled. The first item comes with the first token even
    when it adds no text yet ("")."""
    first = True
    async with contextlib.aclosing(triton.pieces(job, ids, answers)) as pieces:
        async for index, piece in pieces:
            if stops[index].hit:
                continue
            text = stops[index].feed(piece)
            if text or first:
                yield index, text
            first = False
            if all(stop.hit for stop in stops):
                return
    for index, stop in enumerate(stops):
        rest = stop.flush()
        if rest:
            yield index, rest


class Disconnected(Exception):
    """The client went away before its answer (or a stream's first token) was ready."""


async def until_disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so receive() waits for that alone)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def before_disconnect(request: Request, work: asyncio.Future) -> object:
    """`work`'s result, unless the client goes away first: then `work` is cancelled (closing the
    answer's pieces, and so the Triton call) and Disconnected raised."""
    watching = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait([work, watching], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
    if not work.done():
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        raise Disconnected
    return work.result()


async def first_text(texts: AsyncIterator[tuple[int, str]]) -> tuple[int, str] | None:
    return await anext(texts, None)


async def joined(texts: AsyncIterator[tuple[int, str]], count: int) -> list[str]:
    """Each of `count` answers' whole text."""
    parts: list[list[str]] = [[] for _ in range(count)]
    async with contextlib.aclosing(texts):
        async for index, text in texts:
            parts[index].append(text)
    return ["".join(each) for each in parts]


def completion_tokens(answers: list[Answer]) -> int:
    return sum(answer.completion_tokens for answer in answers)


class Gateway:
    def __init__(self, settings: Settings):
        self.model = repository.load(settings.repository, settings.served_name)
        self.path = choose_path(self.model, settings.path)
        self.settings = settings
        self.triton: Triton | None = None
        self.tokenizing: ThreadPoolExecutor | None = None
        self.serving, warnings = serving(self.model, self.path)
        self.tool_format = tool_calls.format_for(self.model.tokenizer.chat_template)
        # A start marker that is one special token is looked for by id: the detokenizer may drop its text.
        start = self.tool_format.start if self.tool_format and self.tool_format.start_token else None
        self.tool_start_id = self.model.tokenizer.convert_tokens_to_ids(start) if start else None
        for warning in warnings:
            log.warning("gateway: %s", warning)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.triton = Triton(self.settings.triton_url, self.model, self.path)
        # One thread: a fast tokenizer shared by threads can fail ("Already borrowed") when one call changes
        # its truncation or padding while another encodes, and the GIL lets only one run Python at a time anyway.
        self.tokenizing = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        log.info("gateway: model %s, path %s, Triton %s", self.model.name, self.path, self.settings.triton_url)
        try:
            yield
        finally:
            self.tokenizing.shutdown(wait=False, cancel_futures=True)

    async def job(self, request: Request, chat: bool) -> tuple[validation.Generation, list[int]]:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise ApiError("We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                           "using your HTTP library correctly. The OpenAI API expects a JSON payload.)", None,
                           code="invalid_json") from None
        job = validation.parse(body, chat, self.serving)
        if job.model != self.model.name:
            raise ApiError(f"The model `{job.model}` does not exist; this server serves `{self.model.name}`",
                           "model", status=404, code="model_not_found")
        param = "messages" if chat else "prompt"
        texts = ([value for message in job.messages for value in message.values()] if chat
                 else [job.prompt] if isinstance(job.prompt, str) else [])
        prompts.check_characters(self.model, texts, param)
        encode = (functools.partial(prompts.chat_ids, self.model, job.messages, job.tools, self.tool_format) if chat
                  else functools.partial(prompts.completion_ids, self.model, job.prompt))
        ids = await asyncio.get_running_loop().run_in_executor(self.tokenizing, encode)
        prompts.check_length(self.model, ids, param, len(job.tools.functions) if job.tools else 0)
        return job, ids

    async def chat_completions(self, request: Request) -> Response:
        return await self.complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self.complete(request, chat=False)

    async def complete(self, request: Request, chat: bool) -> Response:
        exchange = metrics.exchange(request).admitted(self.triton.target)
        job, ids = await self.job(request, chat)
        reply = Reply.new(chat, self.model.name)
        answers = [Answer([], running_count=job.continuous_usage, logprobs=[] if job.logprobs else None)
                   for _ in range(job.n)]
        stops = [StopText(job.stop) for _ in answers]
        logprobs = [Logprobs(self.model.fast, chat, answer.logprobs) for answer in answers] if job.logprobs else None
        exchange.generating(len(ids), answers)
        texts = exchange.timed(answer_text(self.triton, job, ids, answers, stops), job.stream)
        if not job.stream:
            whole = await before_disconnect(request, asyncio.ensure_future(joined(texts, job.n)))
            choices = [self.choice(reply, job, index, text, answer, stop, logprobs[index] if logprobs else None)
                       for index, (text, answer, stop) in enumerate(zip(whole, answers, stops, strict=True))]
            return JSONResponse(reply.whole(choices, usage(len(ids), completion_tokens(answers))))
        try:
            first = await before_disconnect(request, asyncio.ensure_future(first_text(texts)))
        except BaseException:
            await texts.aclose()
            raise
        return StreamingResponse(self.events(reply, job, len(ids), answers, stops, texts, first, logprobs),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def choice(self, reply: Reply, job: validation.Generation, index: int, text: str, answer: Answer,
               stop: StopText, logprobs: Logprobs | None) -> dict:
        """One whole answer's choice: its text, or the tool calls parsed from it."""
        reason, message = finish_reason(job, answer, stop, self.model), None
        if job.tools:
            deltas = tool_calls.Deltas(job.tools, self.tool_format)
            message = tool_calls.merged(deltas.feed(text, self.tool_start_id in answer.ids) + deltas.end())
            reason = deltas.finish_reason(reason)
        return reply.choice(index, text, reason, message, logprobs.take() if logprobs else None)

    async def events(self, reply: Reply, job: validation.Generation, prompt_tokens: int, answers: list[Answer],
                     stops: list[StopText], texts: AsyncIterator[tuple[int, str]], first: tuple[int, str] | None,
                     logprobs: list[Logprobs] | None) -> AsyncIterator[bytes]:
        """Server-sent events in OpenAI's chunk format, from the first token (`first`, None when the
        answer ended without one) on, each chunk naming its choice. A client that goes away cancels this
        (Starlette listens for the disconnect), which closes the texts and so cancels the Triton request."""

        # Of each answer's text: where its next tokens' text begins (completions' text_offset).
        sent_chars = [0] * len(answers)

        def sse(body: dict) -> bytes:
            if body["choices"]:
                index = body["choices"][0]["index"]
                if logprobs is not None and logprobs[index].pending():
                    body["choices"][0]["logprobs"] = logprobs[index].take(sent_chars[index])
                if not reply.chat:
                    sent_chars[index] += len(body["choices"][0]["text"])
            if job.include_usage:  # every chunk carries "usage": null, or the running usage, but the last
                body["usage"] = usage(prompt_tokens, completion_tokens(answers)) if job.continuous_usage else None
            return event(body)

        deltas = [tool_calls.Deltas(job.tools, self.tool_format) for _ in answers] if job.tools else None
        seen = [0] * len(answers)  # of each answer's ids, those already looked at for a tool call's start token

        def chunks(index: int, text: str) -> list[bytes]:
            if deltas is None:
                return [sse(reply.chunk(text, index=index))] if text or not reply.chat else []
            ids = answers[index].ids
            starts, seen[index] = self.tool_start_id in ids[seen[index]:], len(ids)
            return [sse(reply.delta_chunk(delta, index)) for delta in deltas[index].feed(text, starts)]

        async with contextlib.aclosing(texts):
            try:
                if reply.chat:
                    for index in range(len(answers)):
                        yield sse(reply.chunk(None, role=True, index=index))
                for chunk in chunks(*first) if first is not None else []:
                    yield chunk
                async for index, text in texts:
                    for chunk in chunks(index, text):
                        yield chunk
            except ApiError as error:  # the status line is sent already: the error goes as an event, no [DONE]
                yield event(error.body())
                return
        for index, (answer, stop) in enumerate(zip(answers, stops, strict=True)):
            reason = finish_reason(job, answer, stop, self.model)
            if deltas is not None:
                for delta in deltas[index].end():
                    yield sse(reply.delta_chunk(delta, index))
                reason = deltas[index].finish_reason(reason)
            yield sse(reply.chunk(None, reason, index=index))
        if job.include_usage:
            yield event(reply.usage_chunk(usage(prompt_tokens, completion_tokens(answers))))
        yield DONE

    async def models(self, _request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def one_model(self, request: Request) -> Response:
        if request.path_params["model"] != self.model.name:
            raise ApiError(f"The model `{request.path_params['model']}` does not exist", "model", status=404,
                           code="model_not_found")
        return JSONResponse(self.model_card())

    def model_card(self) -> dict:
        # max_model_len: the context length, under vLLM's (and SGLang's) ModelCard key, which tools size prompts by.
        return {"id": self.model.name, "object": "model", "created": self.model.created, "owned_by": "gke-triton-llm",
                "max_model_len": self.model.max_seq_len}

    async def ready(self, _request: Request) -> Response:
        """Ready when Triton is and the model the gateway calls is loaded: the pod's readiness and the LB's
        check, and `GET /health` (what vLLM and trtllm-serve answer there, and guidellm checks before a run)."""
        if await self.triton.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": f"Triton or its {self.triton.target} model is not ready"}, status_code=503,
                            headers={"Retry-After": "10"})

    async def live(self, _request: Request) -> Response:
        return JSONResponse({"status": "live"})


async def api_error(_request: Request, error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def disconnected(_request: Request, _error: Disconnected) -> Response:
    return Response(status_code=499)  # nginx's "client closed request": nobody reads it, the log does


async def http_error(_request: Request, error: HTTPException) -> Response:
    # Unknown routes and methods, in OpenAI's error format too.
    return JSONResponse(ApiError(str(error.detail), None, status=error.status_code).body(),
                        status_code=error.status_code)


async def internal_error(_request: Request, error: Exception) -> Response:
    log.exception("gateway: unexpected error", exc_info=error)
    return JSONResponse(ApiError(f"internal error: {error!r}", None, status=500, type="server_error").body(),
                        status_code=500)


class RequestId:
    """`x-request-id` on every response, the 500s of Starlette's outermost error handler included: the
    client's own when it sent one (vLLM's bench sends one per request), else a new one."""

    HEADER = b"x-request-id"

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == self.HEADER), b"")
        request_id = given or uuid.uuid4().hex.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (self.HEADER, request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def limits(settings: Settings, model: repository.Model) -> admission.Limits:
    keys = admission.load_keys(settings.api_keys_dir)
    if settings.api_keys_dir and not keys:
        log.warning("gateway: no API keys in %s: /v1 takes requests without a key", settings.api_keys_dir)
    in_flight = settings.max_in_flight or admission.default_max_in_flight(model.max_batch_size, 1)
    return admission.Limits(keys, settings.max_body_bytes, in_flight, settings.api_keys_dir)


def build(settings: Settings) -> ASGIApp:
    gateway = Gateway(settings)
    bounds = limits(settings, gateway.model)
    log.info("gateway: %d API key(s); at most %d requests in flight and %d-byte bodies", len(bounds.keys),
             bounds.max_in_flight, bounds.max_body_bytes)
    observed = metrics.Metrics()
    observed.in_flight_limit.set(bounds.max_in_flight)
    routes = [
        Route("/v1/chat/completions", gateway.chat_completions, methods=["POST"]),
        Route("/v1/completions", gateway.completions, methods=["POST"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/v1/models/{model:path}", gateway.one_model, methods=["GET"]),
        Route("/health", gateway.ready, methods=["GET"]),
        Route("/health/ready", gateway.ready, methods=["GET"]),
        Route("/health/live", gateway.live, methods=["GET"]),
        Route(metrics.PATH, observed.endpoint, methods=["GET"]),
    ]
    handlers = {ApiError: api_error, Disconnected: disconnected, HTTPException: http_error, Exception: internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=gateway.lifespan)
    return RequestId(metrics.Observe(admission.Admission(app, bounds), observed, skip=admission.OPEN_PATHS))


def create_app() -> ASGIApp:
    return build(Settings.from_env())
