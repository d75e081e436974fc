"""The gateway's request validation for what the served runtime can and cannot carry, and the model's
recommended sampling, without a server: the llmapi runtime is not built on this machine, so what it
refuses is checked here on the CPU build's model with the llmapi runtime's inputs (token_ids false).
The same paths on the real tritonserver are tests/test_gateway.py's."""

from __future__ import annotations

import dataclasses

import pytest

from gateway import repository, validation
from gateway.errors import ApiError
from gateway.triton import ENSEMBLE_SAMPLING, cannot_carry, sampling

MODEL = "SmolLM2-135M-Instruct"
ASK = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}]}


@pytest.fixture(scope="module")
def model(cpu_repository) -> repository.Model:
    return repository.load(cpu_repository)


def serving(model: repository.Model, path: str, defaults: dict | None = None) -> validation.Serving:
    return validation.Serving(model.max_output_len, model.fast.get_vocab_size(True), defaults or {},
                              cannot_carry(model, path))


def refused(body: dict, where: validation.Serving) -> ApiError:
    with pytest.raises(ApiError) as raised:
        validation.parse(body, chat=True, serving=where)
    return raised.value


def test_the_llmapi_runtime_refuses_by_name_what_it_has_no_input_for(model):
    llmapi = serving(dataclasses.replace(model, token_ids=False), "ensemble")
    for name, value in [("repetition_penalty", 1.1), ("min_tokens", 4), ("ignore_eos", True),
                        ("stop_token_ids", [2]), ("min_p", 0.05)]:
        error = refused(ASK | {name: value}, llmapi)
        assert (error.status, error.param, error.code) == (400, name, "unsupported_parameter"), error
        assert error.message.startswith(f"{name} is not supported by this server: ")
    # its neutral value asks for nothing the runtime lacks, and top_k reaches the llmapi model
    job = validation.parse(ASK | {"repetition_penalty": 1.0, "min_tokens": 0, "ignore_eos": False,
                                  "stop_token_ids": [], "min_p": 0, "top_k": 20}, chat=True, serving=llmapi)
    assert sampling(job, ENSEMBLE_SAMPLING) == {"presence_penalty": [0.0], "frequency_penalty": [0.0],
                                                "temperature": [1.0], "top_p": [1.0], "top_k": [20]}


def test_the_direct_path_carries_every_extension_but_min_p(model):
    direct = serving(model, "direct")
    assert set(direct.cannot) == {"min_p"}
    job = validation.parse(ASK | {"max_tokens": 8, "ignore_eos": True, "top_k": -1, "repetition_penalty": 1.2,
                                  "stop_token_ids": [5, 5, 9]}, chat=True, serving=direct)
    assert (job.engine_min_tokens, job.top_k, job.repetition_penalty, job.stop_token_ids) == (8, 0, 1.2, [5, 9])


def test_the_ensemble_path_cannot_take_stop_token_ids(model):
    ensemble = serving(model, "ensemble")
    assert refused(ASK | {"stop_token_ids": [2]}, ensemble).param == "stop_token_ids"


def test_recommended_sampling_is_the_default_and_the_client_wins(model):
    config = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05, "max_new_tokens": 64,
              "do_sample": True, "eos_token_id": 2}
    defaults, warnings = validation.recommended(config, cannot_carry(model, "direct"), model.max_output_len)
    assert warnings == [] and defaults == {key: config[key] for key in validation.RECOMMENDED if key in config}
    where = validation.Serving(model.max_output_len, 49152, defaults)
    job = validation.parse(ASK, chat=True, serving=where)
    assert (job.temperature, job.top_p, job.top_k, job.repetition_penalty, job.max_tokens) == (0.6, 0.9, 20, 1.05, 64)
    job = validation.parse(ASK | {"temperature": 1.0, "top_k": 0, "max_tokens": 100}, chat=True, serving=where)
    assert (job.temperature, job.top_k, job.max_tokens) == (1.0, 0, 100)
    # legacy completions keep OpenAI's 16 tokens unless the model recommends fewer
    completion = {"model": MODEL, "prompt": "Once"}
    assert validation.parse(completion, chat=False, serving=where).max_tokens == 16


def test_a_recommendation_the_runtime_cannot_apply_is_left_out_with_a_warning(model):
    llmapi = cannot_carry(dataclasses.replace(model, token_ids=False), "ensemble")
    defaults, warnings = validation.recommended({"temperature": 0.7, "repetition_penalty": 1.05, "min_p": 0.0},
                                                llmapi, model.max_output_len)
    assert defaults == {"temperature": 0.7, "min_p": 0.0}
    assert warnings == ["generation_config.json recommends repetition_penalty 1.05, which is left out: the llmapi "
                        "runtime's tensorrt_llm model has no input for repetition_penalty"]


@pytest.mark.parametrize(("config", "message"), [
    ({"top_p": 1.5}, "generation_config.json: top_p 1.5 is out of range: it must be between 0 and 1"),
    ({"max_new_tokens": 0}, "generation_config.json: max_new_tokens must be at least 1, got 0"),
    ({"top_k": 2.5}, "generation_config.json: top_k must be an integer, got 2.5"),
])
def test_a_recommendation_no_request_could_carry_stops_the_gateway_at_start(model, config, message):
    with pytest.raises(ValueError) as raised:
        validation.recommended(config, {}, model.max_output_len)
    assert str(raised.value) == message


def test_what_a_build_cannot_enforce_or_return_is_refused_by_name(model):
    """The llmapi runtime's build.json promises no guided decoding or log probabilities (nor does the
    ensemble path): response_format, a forced call and logprobs are refused, never accepted and ignored."""
    from gateway.app import serving as deployed

    llmapi = dataclasses.replace(model, token_ids=False, capabilities={"missing": "NVIDIA's llmapi model has none"})
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for where in (deployed(llmapi, "ensemble")[0], deployed(model, "ensemble")[0]):
        for body, param in [({"response_format": {"type": "json_object"}}, "response_format"),
                            ({"tools": [tool], "tool_choice": "required"}, "tool_choice"),
                            ({"logprobs": True}, "logprobs"), ({"n": 2}, "n")]:
            error = refused(ASK | body, where)
            assert (error.param, error.code) == (param, "unsupported_parameter"), error
        # tool_choice auto needs no grammar: the template renders the tools, the gateway reads the call
        assert validation.parse(ASK | {"tools": [tool]}, chat=True, serving=where).tools.choice == "auto"
    direct = deployed(model, "direct")[0]
    assert validation.parse(ASK | {"response_format": {"type": "json_object"}}, chat=True,
                            serving=direct).guide == ("json", "")
    engine = dataclasses.replace(model, capabilities={**model.capabilities, "top_log_probs": 0})
    assert refused(ASK | {"logprobs": True, "top_logprobs": 2}, deployed(engine, "direct")[0]).param == "top_logprobs"


def test_n_is_bounded_by_openais_limit_and_the_batch_each_answer_takes_a_row_of(model):
    from gateway.app import serving as deployed

    direct = deployed(model, "direct")[0]
    assert validation.parse(ASK | {"n": model.max_batch_size}, chat=True, serving=direct).n == model.max_batch_size
    for n, message in [(0, "n 0 is out of range: it must be between 1 and 128"),
                       (model.max_batch_size + 1, f"n {model.max_batch_size + 1} is more than this deployment's "
                        f"max_batch_size {model.max_batch_size}: each answer is a sequence of the engine's batch")]:
        error = refused(ASK | {"n": n}, direct)
        assert (error.param, error.message) == ("n", message)
    assert refused(ASK | {"n": True}, direct).code == "invalid_type"


def test_a_prompt_of_token_ids_is_taken_as_given_and_foreign_ids_are_refused(model):
    direct = serving(model, "direct")
    ids = model.tokenizer.encode("The capital of France is")
    for prompt in (ids, [ids]):  # lm-eval sends a batch of one
        assert validation.parse({"model": "m", "prompt": prompt}, chat=False, serving=direct).prompt == ids
    with pytest.raises(ApiError) as raised:
        validation.parse({"model": "m", "prompt": [5, 49152, -1]}, chat=False, serving=direct)
    assert (raised.value.param, raised.value.message) == (
        "prompt", "prompt has token ids that are not of this model (0 to 49151): [-1, 49152]")
    with pytest.raises(ApiError) as raised:
        validation.parse({"model": "m", "prompt": [ids, ids]}, chat=False, serving=direct)
    assert raised.value.code == "unsupported_parameter"
