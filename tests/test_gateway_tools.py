"""Tool calling and structured output through the gateway on the real tritonserver (the CPU runtime's
xgrammar-guided decoding), driven by the official openai SDK: forced calls and schema-bound answers
validate against their schemas (jsonschema), whole and streamed, from the SDK (its .parse() too) and
LangChain (bind_tools, with_structured_output); tool results in the history are read;
`tool_choice: auto` gets an answer from the small default model, in words or as a call."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pydantic
import pytest
from conftest import ROOT, triton_server
from test_gateway import MODEL, RECOMMENDED, Gateway, running_gateway, streamed_answer

pytestmark = pytest.mark.triton

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
        "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                             "parameters": CITY}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now",
                                          "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0}}}


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(triton.repository, triton.http, tmp_path_factory.mktemp("gateway")) as running:
        yield running


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return gateway.client(timeout=300)


def streamed_messages(stream) -> dict[int, tuple[dict, str]]:
    """A stream's deltas merged as a client does it, per choice: content joined, each call's pieces joined by
    index; with the choice's finish reason."""
    merged: dict[int, tuple[str, dict, str | None]] = {}
    for chunk in stream:
        for choice in chunk.choices:
            content, calls, reason = merged.get(choice.index, ("", {}, None))
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": piece.id, "name": "", "arguments": ""})
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
            merged[choice.index] = (content + (choice.delta.content or ""), calls, choice.finish_reason or reason)
    return {index: ({"content": content, "tool_calls": [calls[i] for i in sorted(calls)]}, reason)
            for index, (content, calls, reason) in merged.items()}


def streamed_message(stream) -> tuple[dict, str]:
    return streamed_messages(stream)[0]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_named_function_is_always_called_with_arguments_its_schema_takes(client, stream):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    answer = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=choice,
                                            max_tokens=40, temperature=0, stream=stream)
    if stream:
        message, reason = streamed_message(answer)
        [call] = message["tool_calls"]
    else:
        reason, [tool_call] = answer.choices[0].finish_reason, answer.choices[0].message.tool_calls
        call = {"id": tool_call.id, "name": tool_call.function.name, "arguments": tool_call.function.arguments}
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(json.loads(call["arguments"]), CITY)
    assert reason == "stop"  # as OpenAI answers a call forced by name


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_required_yields_calls_of_offered_functions_that_validate(client, stream):
    answer = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                            max_tokens=60, temperature=0, stream=stream)
    if stream:
        message, reason = streamed_message(answer)
        calls = message["tool_calls"]
    else:
        reason = answer.choices[0].finish_reason
        calls = [{"name": c.function.name, "arguments": c.function.arguments}
                 for c in answer.choices[0].message.tool_calls]
    assert calls and reason == "tool_calls"
    schemas = {"get_weather": CITY, "get_time": TIME["function"]["parameters"]}
    for call in calls:
        jsonschema.validate(json.loads(call["arguments"]), schemas[call["name"]])


def test_auto_gets_an_answer_in_words_or_a_valid_call(client):
    answer = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], max_tokens=40,
                                            temperature=0)
    choice = answer.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            assert call.function.name in ("get_weather", "get_time")
            json.loads(call.function.arguments)
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


def test_a_tool_result_in_the_history_is_answered(client):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny", "celsius": 21}'}]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=30,
                                            temperature=0)
    assert answer.choices[0].message.content or answer.choices[0].message.tool_calls


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_json_schema_response_format_is_held_to(client, stream):
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], response_format=response_format,
        max_tokens=60, temperature=0, stream=stream)
    text = (streamed_message(answer)[0]["content"] if stream else answer.choices[0].message.content)
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_answers_are_json(client):
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A colour as JSON."}],
                                            response_format={"type": "json_object"}, max_tokens=40, temperature=0)
    assert isinstance(json.loads(answer.choices[0].message.content), dict)


def test_the_sdk_parse_helper_gets_its_pydantic_model(client):
    class Person(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=24)
        age: int

    answer = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Invent a person."}],
                                           response_format=Person, max_tokens=60, temperature=0)
    assert isinstance(answer.choices[0].message.parsed, Person)


def test_a_bad_schema_is_refused_by_name_and_the_next_request_works(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}})
    assert raised.value.body["param"] == "response_format.json_schema.schema"
    assert client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5).choices[0].message.content


PLANETS = [{"role": "user", "content": "Name three planets."}]


def test_chat_logprobs_with_alternatives_come_with_each_token(client):
    answer = client.chat.completions.create(model=MODEL, messages=PLANETS, max_tokens=12, temperature=0,
                                            logprobs=True, top_logprobs=3)
    entries = answer.choices[0].logprobs.content
    assert len(entries) == answer.usage.completion_tokens
    assert "".join(entry.token for entry in entries) == answer.choices[0].message.content
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        ranked = [alternative.logprob for alternative in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the most likely one
        assert entry.bytes == list(entry.token.encode())


def test_streamed_logprobs_add_up_to_the_whole_answers(client):
    whole = client.chat.completions.create(model=MODEL, messages=PLANETS, max_tokens=12, temperature=0,
                                           logprobs=True)
    chunks = list(client.chat.completions.create(model=MODEL, messages=PLANETS, max_tokens=12, temperature=0,
                                                 logprobs=True, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [
        (e.token, round(e.logprob, 4)) for e in whole.choices[0].logprobs.content]


def test_completions_logprobs_in_the_legacy_shape(client):
    answer = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0,
                                       logprobs=2)
    logprobs = answer.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 6
    assert all(len(alternatives) <= 2 for alternatives in logprobs.top_logprobs)
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0


def test_more_alternatives_than_the_runtime_returns_are_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=PLANETS, max_tokens=3, logprobs=True, top_logprobs=21)
    assert raised.value.body["param"] == "top_logprobs"


def test_n_answers_each_with_its_own_text_logprobs_and_finish_and_usage_counts_them_all(client):
    """n > 1 is the runtime's num_return_sequences: n sampled answers to one prompt, the same whole or
    streamed (seeded), each choice with its own log probabilities; usage counts every answer's tokens."""
    options = {"model": MODEL, "messages": PLANETS, "max_tokens": 10, "temperature": 1.0, "seed": 11, "n": 3,
               "logprobs": True}
    whole = client.chat.completions.create(**options)
    assert [choice.index for choice in whole.choices] == [0, 1, 2]
    texts = [choice.message.content for choice in whole.choices]
    assert len(set(texts)) > 1, texts  # sampled, each its own sequence
    for choice in whole.choices:
        assert "".join(entry.token for entry in choice.logprobs.content) == choice.message.content
        assert choice.finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens == sum(len(choice.logprobs.content) for choice in whole.choices)
    chunks = list(client.chat.completions.create(**options, stream=True, stream_options={"include_usage": True}))
    streamed = streamed_messages(chunks)
    assert {index: message["content"] for index, (message, _) in streamed.items()} == dict(enumerate(texts))
    assert [streamed[i][1] for i in range(3)] == [choice.finish_reason for choice in whole.choices]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_answers_are_each_held_to_the_schema_or_the_forced_call_and_cut_at_the_stop(client):
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], response_format=response_format,
        max_tokens=60, temperature=1.0, seed=3, n=2)
    for choice in answer.choices:
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    calls = streamed_messages(client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False, max_tokens=40,
        temperature=1.0, seed=3, n=2, stream=True))
    assert sorted(calls) == [0, 1]
    for message, reason in calls.values():
        assert reason == "tool_calls" and message["tool_calls"][0]["name"] == "get_weather", message
        jsonschema.validate(json.loads(message["tool_calls"][0]["arguments"]), CITY)
    cut = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=1.0,
                                    seed=5, n=2, stop=[" "], logprobs=1)
    assert [choice.index for choice in cut.choices] == [0, 1]
    for choice in cut.choices:
        assert " " not in choice.text and choice.finish_reason == "stop", choice
        assert choice.logprobs.text_offset[0] == 0


def test_langchain_bind_tools_and_with_structured_output(gateway):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", model=MODEL, temperature=0, max_tokens=60,
                     max_retries=0, timeout=120)
    message = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("What is the weather in Paris?")
    [call] = message.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], CITY)

    class Person(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=24)
        age: int

    assert isinstance(llm.with_structured_output(Person).invoke("Invent a person."), Person)


@pytest.fixture(scope="module")
def long_prompt_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The default model built to take prompts of up to 7168 of its 8192 tokens (--max-input-len), as a
    deployment for open-webui's built-in tools would be; it recommends short answers, as the gateway that
    replays other clients' bodies does (they name no max_tokens)."""
    folder = tmp_path_factory.mktemp("long-prompt")
    repository = folder / "repository"
    built = subprocess.run([sys.executable, str(ROOT / "build" / "compile.py"), "--gpu", "cpu", "--max-seq-len", "8192",
                            "--max-input-len", "7168", "--out", str(repository)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    config = repository / "ensemble/1/tokenizer/generation_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **RECOMMENDED}))
    with triton_server(repository, folder) as server, running_gateway(repository, server.http, folder) as gateway:
        yield gateway


def test_open_webuis_default_chat_with_its_28_builtin_tools_gets_an_answer(long_prompt_gateway):
    recorded = json.loads((ROOT / "tests/fixtures/clients/open-webui-0.12.4-chat-builtin-tools.json").read_text())
    body = recorded["request"]["body"]
    response = httpx.post(f"{long_prompt_gateway.url}/v1/chat/completions", json=body, timeout=600)
    assert response.status_code == 200, response.text
    text, finish, _ = streamed_answer(response, chat=True, options={})
    chunks = [json.loads(line.removeprefix("data: ")) for line in response.text.split("\n\n")[:-2]]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    calls = [piece["function"] for delta in deltas for piece in delta.get("tool_calls", [])]
    for call in calls:  # under auto the model may call: one of open-webui's tools, with a JSON object of arguments
        assert call["name"] in recorded["builtin_tools"]
        assert isinstance(json.loads(call["arguments"]), dict)
    assert (finish == "tool_calls") == bool(calls)
    assert calls or text
