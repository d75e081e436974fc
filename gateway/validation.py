"""An OpenAI request body -> a Generation, or an ApiError that names the parameter at fault.

OpenAI's own ranges (temperature 0-2, top_p 0-1, penalties -2-2, at most 4 stop sequences) are
checked here; what TensorRT-LLM would refuse besides is checked with the ranges the Triton models
use (model_repository/common/sampling_ranges.py), so the gateway never sends a value that fails
deep in the engine.

What clients send is accepted where the answer comes out as they meant it: keys that change nothing
for a text answer are dropped, OpenAI features at the value that asks for nothing (`logprobs: null`,
`tools: []`, `response_format: {"type": "text"}`) pass, and the sampling extensions vLLM, SGLang and
trtllm-serve take (`top_k`, `repetition_penalty`, `min_tokens`, `ignore_eos`, `stop_token_ids`,
`min_p`) are honoured where this deployment's engine inputs can carry them. A parameter is refused by
name only where ignoring it would give a silently wrong answer: a feature not implemented, an
extension the runtime has no input for, a key nobody here knows.

`tools` (gateway/tool_calls.py) and `response_format` are served where the answer can be held to them:
a JSON schema or a forced call needs the runtime's guided decoding (Serving.guided), never accepted
and then left to chance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

# model_repository/common, on the path from gateway/__init__.py
from sampling_ranges import range_error

from gateway import tool_calls
from gateway.errors import ApiError, unsupported

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_TOP_LOGPROBS = {True: 20, False: 5}  # OpenAI's limits: chat's top_logprobs, completions' logprobs
MAX_CHOICES = 128  # OpenAI's limit on n
INT32_MAX = 2**31 - 1
# OpenAI keys that change nothing in the text of an answer from this server, so they are dropped:
# who asks (`user`, `safety_identifier`), what OpenAI would store or bill (`store`, `metadata`,
# `service_tier`) and hints that only make OpenAI faster (`prompt_cache_key`, `prediction`).
INERT = {"user", "safety_identifier", "store", "metadata", "service_tier", "prompt_cache_key", "prediction"}
# The sampling extensions of vLLM, SGLang and trtllm-serve (their request models declare them), with
# the value that leaves sampling as it is: accepted on every runtime; any other value only where the
# runtime's inputs take it (Serving.cannot).
EXTENSIONS = {"top_k": (0, -1), "min_p": (0,), "repetition_penalty": (1,), "min_tokens": (0,),
              "ignore_eos": (False,), "stop_token_ids": ([],)}
COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop",
          "presence_penalty", "frequency_penalty", "n", "response_format", "logprobs"} | INERT | set(EXTENSIONS)
CHAT = COMMON | {"messages", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls", "top_logprobs"}
COMPLETION = COMMON | {"prompt"}
# stream_options keys: `include_obfuscation` pads chunks against length side channels, no content.
STREAM_OPTIONS = {"include_usage", "continuous_usage_stats", "include_obfuscation"}
# The value at which an UNSUPPORTED parameter asks for nothing this server does not do anyway
# (besides null, false, [] and {}): plain text, no tool called, one sequence, no prefix or suffix.
ASKS_NOTHING = {"function_call": ["none", "auto"], "best_of": [1], "suffix": [""],
                "modalities": [["text"]]}
# OpenAI parameters this server knows and cannot serve, and why.
UNSUPPORTED = {
    "logit_bias": "TensorRT-LLM's backend takes no per-token bias",
    "functions": "the deprecated `functions`; send them as `tools`",
    "function_call": "the deprecated `function_call`; send `tool_choice`",
    "best_of": "best_of (generate several, return the most likely) is not implemented; `n` returns them all",
    "echo": "the prompt is not echoed",
    "suffix": "insertion (suffix) is not implemented",
    "audio": "audio output is not implemented",
    "modalities": "only text output is implemented",
    "reasoning_effort": "reasoning controls are not implemented",
    "web_search_options": "web search is not implemented",
}
ROLES = {"system", "developer", "user", "assistant", "tool"}
MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id"}
# What generation_config.json may recommend and a request may leave out: the keys vLLM takes from it
# (vllm-project/vllm vllm/config/model.py, ModelConfig.get_diff_sampling_param), max_new_tokens
# standing for max_tokens.
RECOMMENDED = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens")


@dataclass(frozen=True)
class Serving:
    """What this deployment can do, from its repository and the path to Triton (app.Gateway builds it)."""

    max_output_len: int
    vocab_size: int
    # The model's recommended sampling (generation_config.json), for what a request leaves out.
    defaults: dict[str, float] = field(default_factory=dict)
    # Extensions the runtime has no input for, and why: any value but the neutral one is refused.
    cannot: dict[str, str] = field(default_factory=dict)
    # Why the runtime cannot hold an answer to a grammar (guided decoding), or None where it can.
    unguided: str | None = None
    # Why it returns no log probabilities (None where it does), and how many alternatives per token it can.
    no_logprobs: str | None = None
    max_top_logprobs: int = 0
    # Why it cannot answer one prompt with several sequences (None where it can), and at most how many.
    no_sequences: str | None = "this runtime answers one sequence per request"
    max_sequences: int = 1


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
    top_k: int = 0  # 0: no top-k
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] = field(default_factory=list)
    continuous_usage: bool = False  # usage so far on every chunk (stream_options.continuous_usage_stats)
    messages: list[dict] = field(default_factory=list)  # chat: role/content (name, tool calls), content as text
    prompt: str | list[int] = ""  # completions: text, or token ids
    tools: tool_calls.Tools | None = None  # chat: functions the model may call, and how
    # (guided_decoding_guide_type, guided_decoding_guide) for the engine, as TensorRT-LLM names them
    guide: tuple[str, str] | None = None
    logprobs: bool = False  # each token's log probability (return_log_probs)
    top_logprobs: int = 0  # and this many most likely alternatives (num_top_log_probs)
    n: int = 1  # answers to the one prompt (num_return_sequences)

    @property
    def greedy(self) -> bool:
        # OpenAI's temperature 0 (or a top_p of 0) is the most likely token each step: top_k 1 on TensorRT-LLM.
        return self.temperature == 0 or self.top_p == 0 or self.top_k == 1

    @property
    def engine_min_tokens(self) -> int:
        """ignore_eos is min_tokens = max_tokens: the engine masks its end id until max_tokens, which both
        runtimes' min_tokens input does (TensorRT-LLM's minLength penalty, the CPU runtime's adjust_logits)."""
        return self.max_tokens if self.ignore_eos else self.min_tokens


def _number(body: dict, name: str, default: float, low: float | None, high: float | None) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ApiError(f"{name} must be a number, got {value!r}", name, code="invalid_type")
    if low is not None and high is not None and not low <= value <= high:
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


def _boolean(body: dict, name: str, where: str | None = None) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        where = where or name
        raise ApiError(f"{where} must be a boolean, got {value!r}", where, code="invalid_type")
    return value


def _asks_nothing(name: str, value: object) -> bool:
    if value is None or value is False or value == [] or value == {}:
        return True
    return any(type(value) is type(each) and value == each for each in ASKS_NOTHING.get(name, []))


def _refuse_unknown(body: dict, known: set[str]) -> None:
    for name in body:
        if name in UNSUPPORTED and not _asks_nothing(name, body[name]):
            raise unsupported(name, UNSUPPORTED[name])
        if name not in known and name not in UNSUPPORTED:
            raise ApiError(f"Unrecognized request argument supplied: {name}", name, code="unknown_parameter")


def _stream_options(body: dict, stream: bool) -> tuple[bool, bool]:
    """(include_usage, continuous_usage). Continuous usage needs include_usage too, as in vLLM
    (serving_chat.py: include_continuous_usage = include_usage and continuous_usage_stats)."""
    options = body.get("stream_options")
    if options is None:
        return False, False
    if not stream:
        raise ApiError("stream_options is only allowed when stream is true", "stream_options", code="invalid_value")
    if not isinstance(options, dict):
        raise ApiError(f"stream_options must be an object, got {options!r}", "stream_options", code="invalid_type")
    for key in options:
        if key not in STREAM_OPTIONS:
            raise ApiError(f"Unrecognized stream option supplied: {key}; this server takes "
                           f"{', '.join(sorted(STREAM_OPTIONS))}", f"stream_options.{key}", code="unknown_parameter")
    include = _boolean(options, "include_usage", "stream_options.include_usage")
    continuous = _boolean(options, "continuous_usage_stats", "stream_options.continuous_usage_stats")
    _boolean(options, "include_obfuscation", "stream_options.include_obfuscation")
    return include, include and continuous


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


def _stop_token_ids(body: dict, vocab_size: int) -> list[int]:
    value = body.get("stop_token_ids")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise ApiError(f"stop_token_ids must be a list of token ids, got {value!r}", "stop_token_ids",
                       code="invalid_type")
    outside = [i for i in value if not 0 <= i < vocab_size]
    if outside:
        raise ApiError(f"stop_token_ids {outside} are not token ids of this model (0 to {vocab_size - 1})",
                       "stop_token_ids", code="invalid_value")
    return list(dict.fromkeys(value))


def _top_k(body: dict, default: float) -> int:
    value = _integer(body, "top_k")
    if value is None:
        return int(default)
    if value < -1 or value > INT32_MAX:
        raise ApiError(f"top_k {value} is out of range: -1 or 0 (every token) or a number of tokens up to "
                       f"{INT32_MAX}", "top_k", code="invalid_value")
    return max(value, 0)  # vLLM's -1 and TensorRT-LLM's 0 both mean no top-k


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


def _messages(body: dict) -> list[dict]:
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
        if role == "function" or message.get("function_call"):
            raise unsupported(f"{where}.role" if role == "function" else f"{where}.function_call",
                              "the deprecated function messages; send tool_calls and `tool` messages")
        if role not in ROLES:
            raise ApiError(f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {role!r}",
                           f"{where}.role", code="invalid_value")
        for key in message:
            if key not in MESSAGE_KEYS:
                raise unsupported(f"{where}.{key}", f"a message's {key}; it reads {', '.join(sorted(MESSAGE_KEYS))}")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise ApiError(f"{where}.name must be a string, got {name!r}", f"{where}.name", code="invalid_type")
        calling = role == "assistant" and message.get("tool_calls")
        content = message.get("content")
        # OpenAI's `developer` role is the newer name of `system`; chat templates know `system`.
        turn = {"role": "system" if role == "developer" else role,
                "content": "" if calling and content is None else _text(content, f"{where}.content")}
        if name:  # the template sees it, as vLLM passes it; templates that do not name speakers ignore it
            turn["name"] = name
        result.append(turn | tool_calls.history(message, where))
    return result


def _token_ids(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(type(each) is int for each in value)


def _prompt(body: dict, vocab_size: int) -> str | list[int]:
    """The prompt as text, or as token ids (OpenAI and vLLM take both; lm-eval sends ids by default), alone
    or as a batch of one."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and (isinstance(prompt[0], str) or _token_ids(prompt[0])):
        prompt = prompt[0]
    if _token_ids(prompt):
        foreign = sorted({i for i in prompt if not 0 <= i < vocab_size})
        if foreign:
            raise ApiError(f"prompt has token ids that are not of this model (0 to {vocab_size - 1}): {foreign[:5]}",
                           "prompt", code="invalid_value")
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1:
        raise unsupported("prompt", "a batch of prompts; send one prompt per request")
    if not isinstance(prompt, str):
        raise ApiError(f"prompt must be a string, got {prompt!r}", "prompt",
                       code="invalid_type" if prompt is not None else "missing_required_parameter")
    return prompt


def _response_format(body: dict) -> tuple[str, str] | None:
    """response_format -> TensorRT-LLM's guided decoding (guide type, guide); None for plain text."""
    value = body.get("response_format")
    kind = value.get("type") if isinstance(value, dict) else None
    if value is None or kind == "text":
        return None
    if kind == "json_object":
        return "json", ""  # any JSON object: xgrammar's built-in JSON grammar
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ApiError("response_format.json_schema must be {'name': ..., 'schema': {...}, 'strict': ...}",
                           "response_format.json_schema", code="invalid_value")
        schema = tool_calls.schema_of(spec.get("schema"), "response_format.json_schema.schema")
        return "json_schema", json.dumps(schema)
    raise ApiError("response_format.type must be 'text', 'json_object' or 'json_schema', got "
                   f"{kind if kind is not None else value!r}", "response_format.type", code="invalid_value")


def _guide(generation: Generation, response_format: tuple[str, str] | None, serving: Serving) -> None:
    """The one grammar an answer is held to: a forced tool call's, else response_format's."""
    forced = generation.tools.schema() if generation.tools else None
    if forced is not None and response_format is not None:
        raise ApiError("a forced tool call (tool_choice required or a function) and response_format both "
                       "constrain the answer; send one of them", "response_format", code="invalid_value")
    if (forced is not None or response_format is not None) and serving.unguided:
        param = "tool_choice" if forced is not None else "response_format"
        raise unsupported(param, f"holding the answer to a JSON schema needs guided decoding: {serving.unguided}")
    generation.guide = ("json_schema", json.dumps(forced)) if forced is not None else response_format


def _logprobs(body: dict, chat: bool, serving: Serving) -> tuple[bool, int]:
    """(logprobs, top_logprobs): chat's `logprobs` boolean and `top_logprobs`, or completions' `logprobs`
    count (the chosen token's log probability, and that many alternatives)."""
    if chat:
        wanted = _boolean(body, "logprobs")
        top, name = _integer(body, "top_logprobs"), "top_logprobs"
        if top and not wanted:
            raise ApiError("top_logprobs requires logprobs to be true", "top_logprobs", code="invalid_value")
    else:
        top, name = _integer(body, "logprobs"), "logprobs"
        wanted = top is not None
    top = top or 0
    if not 0 <= top <= MAX_TOP_LOGPROBS[chat]:
        raise ApiError(f"{name} {top} is out of range: it must be between 0 and {MAX_TOP_LOGPROBS[chat]}", name,
                       code="invalid_value")
    if wanted and serving.no_logprobs:
        raise unsupported("logprobs", serving.no_logprobs)
    if top > serving.max_top_logprobs:
        raise unsupported(name, f"{name} {top}: this runtime returns at most {serving.max_top_logprobs} "
                                "alternatives per token")
    return wanted, top


def _choices(body: dict, serving: Serving) -> int:
    """`n`: how many answers to the one prompt, each its own sequence in the engine's batch."""
    n = _integer(body, "n")
    if n is None:
        return 1
    if not 1 <= n <= MAX_CHOICES:
        raise ApiError(f"n {n} is out of range: it must be between 1 and {MAX_CHOICES}", "n", code="invalid_value")
    if n > 1 and serving.no_sequences:
        raise unsupported("n", f"n={n}: {serving.no_sequences}")
    if n > serving.max_sequences:
        raise ApiError(f"n {n} is more than this deployment's max_batch_size {serving.max_sequences}: each answer "
                       "is a sequence of the engine's batch", "n", code="invalid_value")
    return n


def _engine_ranges(generation: Generation) -> None:
    """What TensorRT-LLM itself refuses, named as the client named it (sampling_ranges.py)."""
    checks = [("seed", "seed", generation.seed), ("presence_penalty", "presence_penalty", generation.presence_penalty),
              ("frequency_penalty", "frequency_penalty", generation.frequency_penalty),
              ("repetition_penalty", "repetition_penalty", generation.repetition_penalty),
              ("min_tokens", "min_tokens", generation.min_tokens)]
    for ours, theirs, value in checks:
        message = range_error(ours, theirs, value) if value is not None else None
        if message:
            raise ApiError(message, ours, code="invalid_value")


def _neutral(name: str, value: object) -> bool:
    """Whether an extension's value leaves sampling as it is (1.0 counts as 1; True does not)."""
    return value is None or any(value == each and isinstance(value, bool) == isinstance(each, bool)
                                for each in EXTENSIONS[name])


def _extensions(body: dict, serving: Serving, generation: Generation) -> None:
    """Refuse, by name, an extension this runtime cannot carry when the client asked for more than its
    neutral value: dropping it would answer as if it had not been sent."""
    if generation.min_tokens > generation.max_tokens:
        raise ApiError(f"min_tokens {generation.min_tokens} is above max_tokens {generation.max_tokens}",
                       "min_tokens", code="invalid_value")
    for name, why in serving.cannot.items():
        if not _neutral(name, body.get(name)):
            raise unsupported(name, why)


def parse(body: object, chat: bool, serving: Serving) -> Generation:
    """Validate a /v1/chat/completions (chat) or /v1/completions body."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object", None)
    _refuse_unknown(body, CHAT if chat else COMPLETION)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError("you must provide a model parameter", "model", code="missing_required_parameter")
    stream = _boolean(body, "stream")
    include_usage, continuous_usage = _stream_options(body, stream)
    limit, defaults = serving.max_output_len, serving.defaults
    # OpenAI: chat answers run to the context's end unless limited; legacy completions default to 16.
    # A recommended max_new_tokens lowers that default, as in vLLM; a client's own max_tokens stands.
    default_max = min(limit if chat else 16, limit, int(defaults.get("max_new_tokens", limit)))
    generation = Generation(
        model=model,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous_usage,
        max_tokens=_max_tokens(body, ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",),
                               default_max, limit),
        temperature=_number(body, "temperature", defaults.get("temperature", 1.0), 0.0, 2.0),
        top_p=_number(body, "top_p", defaults.get("top_p", 1.0), 0.0, 1.0),
        seed=_integer(body, "seed"),
        stop=_stop(body),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        top_k=_top_k(body, defaults.get("top_k", 0)),
        repetition_penalty=_number(body, "repetition_penalty", defaults.get("repetition_penalty", 1.0), None, None),
        min_tokens=_integer(body, "min_tokens") or 0,
        ignore_eos=_boolean(body, "ignore_eos"),
        stop_token_ids=_stop_token_ids(body, serving.vocab_size),
    )
    _number(body, "min_p", 0.0, 0.0, 1.0)
    _engine_ranges(generation)
    _extensions(body, serving, generation)
    if chat:
        generation.messages = _messages(body)
        generation.tools = tool_calls.parse(body)
        if generation.tools and generation.tools.choice == "none":
            generation.tools = None  # the model answers in words, as if no tools had been offered
    _guide(generation, _response_format(body), serving)
    generation.logprobs, generation.top_logprobs = _logprobs(body, chat, serving)
    generation.n = _choices(body, serving)
    if not chat:
        generation.prompt = _prompt(body, serving.vocab_size)
    return generation


def recommended(config: dict, cannot: dict[str, str], max_output_len: int) -> tuple[dict[str, float], list[str]]:
    """generation_config.json's sampling recommendations as request defaults, and a warning for each
    one this runtime cannot apply (it is left out: the engine's own default applies instead).
    A recommendation a request could not carry either is refused, naming the file, at start."""
    defaults, warnings = {}, []
    for key in RECOMMENDED:
        value = config.get(key)
        if value is None:
            continue
        if key in cannot and not _neutral(key, value):
            warnings.append(f"generation_config.json recommends {key} {value}, which is left out: {cannot[key]}")
            continue
        defaults[key] = value
    probe = {"model": "-", "prompt": "-"} | {key: value for key, value in defaults.items() if key != "max_new_tokens"}
    try:
        parse(probe, chat=False, serving=Serving(max_output_len, 1))
        _max_tokens({"max_new_tokens": defaults.get("max_new_tokens")}, ("max_new_tokens",), 1, 2**31)
    except ApiError as error:
        raise ValueError(f"generation_config.json: {error.message}") from None
    return defaults, warnings
