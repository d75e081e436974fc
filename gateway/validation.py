"""An OpenAI request body -> a Generation, or an ApiError that names the parameter at fault.

OpenAI's own ranges (temperature 0-2, top_p 0-1, penalties -2-2, at most 4 stop sequences) are
checked here; what TensorRT-LLM would refuse besides is checked with the ranges the Triton models
use (model_repository/common/sampling_ranges.py), so the gateway never sends a value that fails
deep in the engine. Parameters the server cannot honour are refused by name, never ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# model_repository/common, on the path from gateway/__init__.py
from sampling_ranges import range_error

from gateway.errors import ApiError, unsupported

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
# Accepted and not needed for generation: `user` identifies the caller (for the caller's own records).
INERT = {"user"}
COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop",
          "presence_penalty", "frequency_penalty", "n"} | INERT
CHAT = COMMON | {"messages", "max_completion_tokens"}
COMPLETION = COMMON | {"prompt"}
# OpenAI parameters this server knows and cannot serve, and why.
UNSUPPORTED = {
    "logprobs": "log probabilities are not returned by the Triton models",
    "top_logprobs": "log probabilities are not returned by the Triton models",
    "logit_bias": "TensorRT-LLM's backend takes no per-token bias",
    "tools": "tool calling is not implemented",
    "tool_choice": "tool calling is not implemented",
    "parallel_tool_calls": "tool calling is not implemented",
    "functions": "function calling is not implemented",
    "function_call": "function calling is not implemented",
    "response_format": "structured output is not implemented",
    "best_of": "only one sequence is generated per request",
    "echo": "the prompt is not echoed",
    "suffix": "insertion (suffix) is not implemented",
    "audio": "audio output is not implemented",
    "modalities": "only text output is implemented",
    "prediction": "predicted outputs are not implemented",
    "reasoning_effort": "reasoning controls are not implemented",
    "web_search_options": "web search is not implemented",
}
ROLES = {"system", "developer", "user", "assistant"}


@dataclass
class Generation:
    """One validated request, in the terms the Triton backends need."""

    model: str
    stream: bool
    include_usage: bool
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    presence_penalty: float
    frequency_penalty: float
    messages: list[dict[str, str]] = field(default_factory=list)  # chat: role/content, content as text
    prompt: str = ""  # completions

    @property
    def greedy(self) -> bool:
        # OpenAI's temperature 0 (or a top_p of 0) is the most likely token each step: top_k 1 on TensorRT-LLM.
        return self.temperature == 0 or self.top_p == 0


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ApiError(f"{name} must be a number, got {value!r}", name, code="invalid_type")
    if not low <= value <= high:
        raise ApiError(f"{name} {value} is out of range: it must be between {low:g} and {high:g}", name,
                       code="invalid_value")
    return float(value)


def _integer(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(f"{name} must be an integer, got {value!r}", name, code="invalid_type")
    return value


def _boolean(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(f"{name} must be a boolean, got {value!r}", name, code="invalid_type")
    return value


def _refuse_unknown(body: dict, known: set[str]) -> None:
    for name in body:
        if name in UNSUPPORTED and body[name] not in (None, False, [], {}):
            if name == "response_format" and body[name] == {"type": "text"}:
                continue  # plain text is what every answer is
            raise unsupported(name, UNSUPPORTED[name])
        if name not in known and name not in UNSUPPORTED:
            raise ApiError(f"Unrecognized request argument supplied: {name}", name, code="unknown_parameter")


def _stop(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(f"stop must be a string or a list of strings, got {value!r}", "stop", code="invalid_type")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ApiError(f"stop has {len(stops)} sequences; at most {MAX_STOP_SEQUENCES} are allowed", "stop",
                       code="invalid_value")
    if any(not s for s in stops):
        raise ApiError("stop sequences must not be empty", "stop", code="invalid_value")
    return stops


def _max_tokens(body: dict, names: tuple[str, ...], default: int, limit: int) -> int:
    for name in names:
        value = _integer(body, name)
        if value is None:
            continue
        if value < 1:
            raise ApiError(f"{name} must be at least 1, got {value}", name, code="invalid_value")
        if value > limit:
            raise ApiError(f"{name} {value} is above this deployment's limit of {limit} (max_output_len)", name,
                           code="invalid_value")
        return value
    return default


def _text(content: object, where: str) -> str:
    """A message's content as text: a string, or a list of text parts (other parts are refused)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                if kind in ("image_url", "input_audio", "file", "image", "audio"):
                    raise unsupported(f"{where}[{i}]", f"content of type {kind!r}; this model reads text only")
                raise ApiError(f"{where}[{i}] must be a text part {{'type': 'text', 'text': ...}}, got {part!r}",
                               f"{where}[{i}]", code="invalid_type")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(f"{where} must be a string or a list of text parts, got {content!r}", where, code="invalid_type")


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list of {role, content} objects", "messages",
                       code="invalid_type" if messages is not None else "missing_required_parameter")
    result = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(f"{where} must be an object, got {message!r}", where, code="invalid_type")
        role = message.get("role")
        if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
            raise unsupported(f"{where}.role" if role in ("tool", "function") else f"{where}.tool_calls",
                              "tool calling is not implemented")
        if role not in ROLES:
            raise ApiError(f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {role!r}",
                           f"{where}.role", code="invalid_value")
        for key in message:
            if key not in ("role", "content", "tool_calls", "function_call"):
                raise unsupported(f"{where}.{key}", "only role and content are read from a message")
        # OpenAI's `developer` role is the newer name of `system`; chat templates know `system`.
        result.append({"role": "system" if role == "developer" else role,
                       "content": _text(message.get("content"), f"{where}.content")})
    return result


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, list) and len(prompt) > 1:
        raise unsupported("prompt", "a batch of prompts; send one prompt per request")
    if not isinstance(prompt, str):
        raise ApiError(f"prompt must be a string, got {prompt!r}", "prompt",
                       code="invalid_type" if prompt is not None else "missing_required_parameter")
    return prompt


def _engine_ranges(generation: Generation) -> None:
    """What TensorRT-LLM itself refuses, named as the client named it (sampling_ranges.py)."""
    checks = [("seed", "seed", generation.seed), ("presence_penalty", "presence_penalty", generation.presence_penalty),
              ("frequency_penalty", "frequency_penalty", generation.frequency_penalty)]
    for ours, theirs, value in checks:
        message = range_error(ours, theirs, value) if value is not None else None
        if message:
            raise ApiError(message, ours, code="invalid_value")


def parse(body: object, chat: bool, max_output_len: int) -> Generation:
    """Validate a /v1/chat/completions (chat) or /v1/completions body."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object", None)
    _refuse_unknown(body, CHAT if chat else COMPLETION)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError("you must provide a model parameter", "model", code="missing_required_parameter")
    n = _integer(body, "n")
    if n is not None and n != 1:
        raise unsupported("n", f"n={n}; only one choice (n=1) is generated per request")
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise ApiError("stream_options is only allowed when stream is true", "stream_options", code="invalid_value")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise ApiError(f"stream_options must be {{'include_usage': bool}}, got {options!r}", "stream_options",
                       code="invalid_value")
    seed = _integer(body, "seed")
    generation = Generation(
        model=model,
        stream=stream,
        include_usage=_boolean(options or {}, "include_usage"),
        # OpenAI: chat answers run to the context's end unless limited; legacy completions default to 16.
        max_tokens=_max_tokens(body, ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",),
                               max_output_len if chat else min(16, max_output_len), max_output_len),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        seed=seed,
        stop=_stop(body),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
    )
    _engine_ranges(generation)
    if chat:
        generation.messages = _messages(body)
    else:
        generation.prompt = _prompt(body)
    return generation
