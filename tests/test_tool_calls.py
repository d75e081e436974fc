"""Tool calls: each family's format as tool_formats.toml records it (from vLLM's parsers and the models'
chat templates) is read back into OpenAI's tool_calls, whole or in streamed pieces; the tools a request
offers are checked, naming the field at fault."""

from __future__ import annotations

import json

import jsonschema
import pytest

from gateway import tool_calls
from gateway.errors import ApiError
from gateway.tool_calls import FORMATS, Deltas, ToolFormat, merged, split

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function",
           "function": {"name": "get_weather", "description": "Weather in a city", "parameters": CITY}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def offered(choice: object = None, tools: list | None = None) -> tool_calls.Tools:
    body = {"tools": tools or [WEATHER, TIME]} | ({"tool_choice": choice} if choice is not None else {})
    return tool_calls.parse(body)


def streamed(deltas: Deltas, text: str, size: int) -> dict:
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    return merged([delta for piece in pieces for delta in deltas.feed(piece)] + deltas.end())


@pytest.mark.parametrize("name", list(FORMATS["formats"]))
@pytest.mark.parametrize("size", [1, 3, 1000])
def test_each_family_call_is_read_whole_and_streamed(name, size):
    deltas = Deltas(offered(), ToolFormat.named(name))
    message = streamed(deltas, FORMATS["formats"][name]["example"], size)
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert deltas.finish_reason("stop") == "tool_calls"


def test_words_before_a_call_stay_content_and_a_marker_split_across_pieces_is_not_leaked():
    deltas = Deltas(offered(), ToolFormat.named("hermes"))
    sent = []
    for piece in ["Let me check. <", "tool", "_call>", '{"name": "get_time", "arguments": {}}', "</tool_call>"]:
        sent += deltas.feed(piece)
    assert sent == [{"content": "Let me check. "}]  # nothing of the marker went out as text
    message = merged(sent + deltas.end())
    assert message["content"] == "Let me check. "
    assert message["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}


def test_two_hermes_calls_in_one_answer():
    text = ('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n'
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>')
    parsed = split(text, ToolFormat.named("hermes"), offered())
    assert parsed.calls == [("get_time", {}), ("get_weather", {"city": "Oslo"})]


@pytest.mark.parametrize("text", [
    '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>',  # not an offered function
    '<tool_call>{"name": "get_time", "arguments": {</tool_call>',  # cut short
    "a plain answer with a < sign",
])
def test_what_is_not_a_call_of_an_offered_function_is_the_answer_text(text):
    deltas = Deltas(offered(), ToolFormat.named("hermes"))
    message = streamed(deltas, text, 4)
    assert message == {"role": "assistant", "content": text, "refusal": None}
    assert deltas.finish_reason("stop") == "stop"


def test_llama_words_are_not_held_back_as_a_possible_call():
    deltas = Deltas(offered(), ToolFormat.named("llama3_json"))
    assert deltas.feed("Sunny") == [{"content": "Sunny"}]


def test_a_named_function_streams_its_arguments_as_they_come():
    deltas = Deltas(offered({"type": "function", "function": {"name": "get_weather"}}), None)
    first = deltas.feed('{"city"')
    assert first[0]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    assert first[1] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}
    message = merged(first + deltas.feed(': "Rome"}') + deltas.end())
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
    assert deltas.finish_reason("stop") == "stop"  # OpenAI: a call forced by name finishes with stop


def test_required_calls_follow_the_schema_the_decoder_is_held_to():
    tools = offered("required")
    schema = tools.schema()
    answer = [{"name": "get_weather", "parameters": {"city": "Lima"}}, {"name": "get_time", "parameters": {}}]
    jsonschema.validate(answer, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "get_weather", "parameters": {}}], schema)  # city is required
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([], schema)
    deltas = Deltas(tools, None)
    message = merged(deltas.feed(json.dumps(answer)) + deltas.end())
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather", "get_time"]
    assert deltas.finish_reason("stop") == "tool_calls"


def test_parallel_tool_calls_false_allows_one_call():
    schema = tool_calls.parse({"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False}).schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "get_weather", "parameters": {"city": "A"}}] * 2, schema)


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
])
def test_bad_tools_are_refused_naming_the_field(body, param):
    with pytest.raises(ApiError) as caught:
        tool_calls.parse(body)
    assert caught.value.param == param and caught.value.status == 400


def test_the_format_is_chosen_from_the_chat_template():
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}"
    assert tool_calls.format_for(chatml) == ToolFormat.named("hermes", described=True)
    for name, spec in FORMATS["formats"].items():
        for marker in spec["detect"]:
            assert tool_calls.format_for(f"{{% if tools %}}{marker}{{% endif %}}").name == name
    assert tool_calls.format_for("{% if tools %}<|call|>{% endif %}") is None  # tools, in a format we can't read
    assert tool_calls.format_for(None) is None


def test_a_template_without_tools_is_told_them_in_a_system_message():
    fmt = ToolFormat.named("hermes", described=True)
    history = [{"role": "user", "content": "weather?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "A"}}}]},
               {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}]
    messages = tool_calls.described(offered(), history, fmt)
    assert messages[0]["role"] == "system" and '"name": "get_weather"' in messages[0]["content"]
    assert messages[2]["content"] == '<tool_call>{"name": "get_weather", "arguments": {"city": "A"}}</tool_call>'
    assert messages[3] == {"role": "tool", "content": "sunny"}
