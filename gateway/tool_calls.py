"""Tool calling: the `tools` a request offers, how the model's family writes a call, and the calls in its answer.

The format is chosen from the built repository's chat template (gateway/tool_formats.toml records each
family's markers and where they come from). `tool_choice` "auto" lets the model answer or call and the
answer is parsed; "required" and a named function are enforced by the decoder: the answer is constrained
to a JSON schema (the named function's parameters, or a list of calls of the offered functions), as vLLM
does it, so the call always validates, even from a model too small to have learnt the format.

Answers reach the client as OpenAI's message deltas (`content` or `tool_calls`), whole answers as those
deltas merged, so a stream and a whole answer of one request say the same.
"""

from __future__ import annotations

import json
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema

from gateway.errors import ApiError

FORMATS = tomllib.loads((Path(__file__).parent / "tool_formats.toml").read_text())
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names


@dataclass(frozen=True)
class ToolFormat:
    name: str
    start: str
    end: str = ""
    start_token: bool = False  # the start is one special token, looked for by id
    bare_json: bool = False
    arguments: tuple[str, ...] = ("arguments",)
    # The template renders no tools: the gateway describes them in a system message of its own.
    described: bool = False

    @classmethod
    def named(cls, name: str, described: bool = False) -> ToolFormat:
        spec = FORMATS["formats"][name]
        return cls(name, spec["start"], spec.get("end", ""), spec.get("start_token", False),
                   spec.get("bare_json", False), tuple(spec["arguments"]), described)


def format_for(chat_template: str | None) -> ToolFormat | None:
    """The tool-call format a chat template teaches; the fallback when it renders no tools; None without one."""
    if not chat_template:
        return None
    for name, spec in FORMATS["formats"].items():
        if any(marker in chat_template for marker in spec["detect"]):
            return ToolFormat.named(name)
    if re.search(r"\btools\b", chat_template):
        # It renders tools, in a format none of ours reads: answers can't be parsed, so none is claimed.
        return None
    return ToolFormat.named(FORMATS["fallback"]["format"], described=True)


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict


@dataclass(frozen=True)
class Tools:
    """What a request asked: the functions offered and how one must be called."""

    functions: tuple[Function, ...]
    choice: str  # auto | none | required | named
    named: Function | None = None
    parallel: bool = True

    def template(self) -> list[dict]:
        """The tools as transformers' apply_chat_template(tools=...) takes them (OpenAI's shape)."""
        return [{"type": "function", "function": {"name": f.name, "description": f.description,
                                                  "parameters": f.parameters}} for f in self.functions]

    def schema(self) -> dict | None:
        """The JSON schema the answer is held to (None under auto: the model may answer in words)."""
        if self.choice == "named":
            return self.named.parameters
        if self.choice != "required":
            return None
        calls = [{"type": "object", "properties": {"name": {"type": "string", "enum": [f.name]},
                                                   "parameters": f.parameters},
                  "required": ["name", "parameters"]} for f in self.functions]
        return {"type": "array", "minItems": 1, **({} if self.parallel else {"maxItems": 1}),
                "items": {"anyOf": calls}}


def schema_of(value: object, where: str) -> dict:
    """A JSON schema a client sent, checked against its metaschema (jsonschema)."""
    if not isinstance(value, dict):
        raise ApiError(f"{where} must be a JSON schema object, got {value!r}", where, code="invalid_type")
    try:
        jsonschema.validators.validator_for(value).check_schema(value)
    except jsonschema.SchemaError as error:
        raise ApiError(f"{where} is not a valid JSON schema: {error.message}", where, code="invalid_value") from None
    return value


def _function(tool: object, where: str) -> Function:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise ApiError(f"{where} must be {{'type': 'function', 'function': {{'name', 'parameters'}}}}, got {tool!r}",
                       where, code="invalid_type")
    spec = tool["function"]
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ApiError(f"{where}.function.name must be 1-64 letters, digits, '_' or '-', got {name!r}",
                       f"{where}.function.name", code="invalid_value")
    description = spec.get("description") or ""
    if not isinstance(description, str):
        raise ApiError(f"{where}.function.description must be a string", f"{where}.function.description",
                       code="invalid_type")
    parameters = spec.get("parameters", {"type": "object", "properties": {}})  # OpenAI: omitted means none
    return Function(name, description, schema_of(parameters, f"{where}.function.parameters"))


def parse(body: dict) -> Tools | None:
    """`tools`, `tool_choice` and `parallel_tool_calls` of a chat request; None when no tool may be called."""
    offered = body.get("tools") or []
    choice = body.get("tool_choice")
    if not isinstance(offered, list):
        raise ApiError(f"tools must be a list of functions, got {offered!r}", "tools", code="invalid_type")
    if not offered:
        if choice not in (None, "none", "auto"):
            raise ApiError("tool_choice is only allowed when tools are specified", "tool_choice",
                           code="invalid_value")
        return None
    functions = tuple(_function(tool, f"tools[{i}]") for i, tool in enumerate(offered))
    if len({f.name for f in functions}) < len(functions):
        raise ApiError("tools name the same function twice", "tools", code="invalid_value")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise ApiError(f"parallel_tool_calls must be a boolean, got {parallel!r}", "parallel_tool_calls",
                       code="invalid_type")
    parallel = parallel is not False
    if choice in (None, "auto", "none", "required"):
        return Tools(functions, choice or "auto", parallel=parallel)
    wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(wanted, str):
        raise ApiError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': "
                       f"{{'name': ...}}}}, got {choice!r}", "tool_choice", code="invalid_value")
    named = next((f for f in functions if f.name == wanted), None)
    if named is None:
        raise ApiError(f"tool_choice names {wanted!r}, which is not among the tools", "tool_choice",
                       code="invalid_value")
    return Tools(functions, "named", named, parallel)


def history(message: dict, where: str) -> dict:
    """An assistant turn's `tool_calls` or a `tool` turn, as chat templates take them: arguments as an
    object (transformers' convention, as vLLM passes them), the call's id kept."""
    turn = {}
    if message.get("role") == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise ApiError(f"{where}.tool_call_id must be the id of the call this answers", f"{where}.tool_call_id",
                           code="missing_required_parameter")
        turn["tool_call_id"] = call_id
    calls = message.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise ApiError(f"{where}.tool_calls must be a list", f"{where}.tool_calls", code="invalid_type")
        turn["tool_calls"] = [_past_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(calls)]
    return turn


def _past_call(call: object, where: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ApiError(f"{where} must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}",
                       where, code="invalid_type")
    arguments = function.get("arguments") or "{}"
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        raise ApiError(f"{where}.function.arguments is not JSON: {arguments!r}", f"{where}.function.arguments",
                       code="invalid_value") from None
    return {"id": call.get("id", ""), "type": "function",
            "function": {"name": function["name"], "arguments": arguments}}


def described(tools: Tools, messages: list[dict], fmt: ToolFormat) -> list[dict]:
    """Messages for a template that renders no tools: the tools in a system message of our own, past calls
    and results written in the format asked for, so the model sees what a tool-teaching template shows."""
    listing = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools.template())
    teach = (f"You may call functions to answer. They are:\n<tools>\n{listing}\n</tools>\n"
             f"To call one, answer with {fmt.start}{{\"name\": <function name>, \"arguments\": <arguments object>}}"
             f"{fmt.end} and nothing else.")
    if messages and messages[0]["role"] == "system":
        first, rest = {**messages[0], "content": f"{messages[0]['content']}\n\n{teach}"}, messages[1:]
    else:
        first, rest = {"role": "system", "content": teach}, messages
    written = []
    for message in rest:
        message = dict(message)
        for call in message.pop("tool_calls", []):
            body = json.dumps({"name": call["function"]["name"], "arguments": call["function"]["arguments"]})
            message["content"] = f"{message.get('content') or ''}{fmt.start}{body}{fmt.end}"
        message.pop("tool_call_id", None)
        written.append(message)
    return [first, *written]


def call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def _call(index: int, name: str, arguments: str) -> dict:
    return {"index": index, "id": call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}


@dataclass
class Parsed:
    content: str | None
    calls: list[tuple[str, dict]]  # (name, arguments)


def _objects(text: str, fmt: ToolFormat) -> list | None:
    """The JSON value(s) of calls in `text` (after the start marker), or None when they do not parse."""
    decoder = json.JSONDecoder()
    values, at = [], 0
    while at < len(text):
        while at < len(text) and text[at] in " \t\r\n;":
            at += 1
        if at >= len(text):
            break
        try:
            value, at = decoder.raw_decode(text, at)
        except ValueError:
            return None
        values.extend(value if isinstance(value, list) else [value])
        if fmt.end and text[at:].lstrip().startswith(fmt.end):
            at = text.index(fmt.end, at) + len(fmt.end)
        if fmt.end and text[at:].lstrip().startswith(fmt.start):
            at = text.index(fmt.start, at) + len(fmt.start)
    return values


def split(text: str, fmt: ToolFormat, tools: Tools) -> Parsed:
    """An answer's text -> its content and the calls it makes. What does not parse as calls of the offered
    functions stays content, as vLLM's parsers leave it: the client sees what the model wrote."""
    names = {f.name for f in tools.functions}
    at = text.find(fmt.start)
    if at < 0 and fmt.bare_json and text.lstrip().startswith("{"):
        at, body = 0, text
    elif at < 0:
        return Parsed(text, [])
    else:
        body = text[at + len(fmt.start):]
    if fmt.end and fmt.end in body:
        body = body[:body.rindex(fmt.end)]
    values = _objects(body, fmt)
    calls = []
    for value in values or []:
        arguments = next((value[key] for key in fmt.arguments if isinstance(value, dict) and key in value), None)
        if not isinstance(value, dict) or value.get("name") not in names or not isinstance(arguments, dict):
            return Parsed(text, [])
        calls.append((value["name"], arguments))
    if not calls:
        return Parsed(text, [])
    content = text[:at].strip()
    return Parsed(content or None, calls)


@dataclass
class Deltas:
    """An answer's text pieces -> OpenAI message deltas, for one request's tool choice.

    auto: content streams until the text may be starting a call (a start marker, or a prefix of one);
    from there it is held and parsed at the end: calls, or the held text as content after all.
    required: the whole answer is a JSON list of calls, held and sent at the end.
    named: the answer is the arguments: the call's head goes with the first piece, arguments stream."""

    tools: Tools
    fmt: ToolFormat | None
    held: str = ""
    holding: bool = False
    sent_head: bool = False
    called: bool = False
    whole: list[str] = field(default_factory=list)

    def feed(self, text: str, starts_call: bool = False) -> list[dict]:
        """Deltas for the next piece; `starts_call`: the piece's ids hold the format's start token."""
        self.whole.append(text)
        if self.tools.choice == "named":
            deltas = [] if self.sent_head else [{"tool_calls": [_call(0, self.tools.named.name, "")]}]
            self.sent_head = self.called = True
            return deltas + ([{"tool_calls": [{"index": 0, "function": {"arguments": text}}]}] if text else [])
        if self.tools.choice == "required" or self.fmt is None:
            return [] if self.tools.choice == "required" else _content(text)
        if starts_call and not self.holding:
            self.holding, text = True, self.fmt.start + text
        self.held += text
        if not self.holding:
            release = self._releasable()
            if release:
                self.held = self.held[len(release):]
                return _content(release)
        return []

    def _releasable(self) -> str:
        """The held text that cannot be the beginning of a call."""
        held, start = self.held, self.fmt.start
        if start in held:
            self.holding = True
            return held[:held.index(start)]
        if self.fmt.bare_json and not "".join(self.whole[:-1]).strip() and held.lstrip()[:1] in ("", "{"):
            self.holding = held.lstrip().startswith("{")
            return ""
        for keep in range(min(len(start) - 1, len(held)), 0, -1):  # a marker may be arriving in pieces
            if start.startswith(held[-keep:]):
                return held[:-keep]
        return held

    def end(self) -> list[dict]:
        """The deltas still owed when the answer is complete."""
        if self.tools.choice == "named":
            return [] if self.sent_head else self.feed("")
        if self.tools.choice == "required":
            return self._required("".join(self.whole))
        if self.fmt is None or not self.held:
            return []
        parsed = split(self.held, self.fmt, self.tools)
        if not parsed.calls:
            return _content(self.held)
        self.called = True
        head = _content(parsed.content) if parsed.content else []
        return head + [{"tool_calls": [_call(i, name, json.dumps(arguments, ensure_ascii=False))]}
                       for i, (name, arguments) in enumerate(parsed.calls)]

    def _required(self, text: str) -> list[dict]:
        try:
            calls = json.loads(text)
        except ValueError:  # cut short by max_tokens or a stop sequence: what was written is all there is
            return _content(text)
        self.called = True
        return [{"tool_calls": [_call(i, call["name"], json.dumps(call["parameters"], ensure_ascii=False))]}
                for i, call in enumerate(calls)]

    def finish_reason(self, reason: str) -> str:
        """OpenAI answers `tool_calls` when the model chose to call, `stop` when the call was forced by name."""
        if self.called and reason == "stop":
            return "stop" if self.tools.choice == "named" else "tool_calls"
        return reason


def _content(text: str | None) -> list[dict]:
    return [{"content": text}] if text else []


def merged(deltas: list[dict]) -> dict:
    """Deltas -> the whole answer's message: content joined, each call's arguments joined."""
    content = "".join(delta.get("content") or "" for delta in deltas)
    calls: dict[int, dict] = {}
    for delta in deltas:
        for piece in delta.get("tool_calls", []):
            call = calls.setdefault(piece["index"], {"id": piece.get("id"), "type": "function",
                                                     "function": {"name": "", "arguments": ""}})
            call["function"]["name"] += piece.get("function", {}).get("name", "")
            call["function"]["arguments"] += piece.get("function", {}).get("arguments", "")
    message = {"role": "assistant", "content": content or (None if calls else ""), "refusal": None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message
