"""The rendered engine config.pbtxt against the C++ backend's load contract (build/tensorrtllm_backend.toml).

Strict templating only sees keys that are in the template; these tests see the keys the backend reads.
Each check is a plain function returning problems, so every test also shows it fails on a broken copy.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import catalog
import hf_config
import planner
import pytest
import runtimes
import tokenizer_info
from google.protobuf import text_format
from runtimes import cpu, engine
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_FILE = ROOT / "build" / "tensorrtllm_backend.toml"
MODELS = Path(__file__).parent / "fixtures" / "models"
GPU_TARGETS = [g.name for g in catalog.gpus().values() if not g.is_cpu and "engine" in g.runtimes]

CONTRACT = tomllib.loads(CONTRACT_FILE.read_text())
PARAMETERS = {p["name"]: p for p in CONTRACT["parameter"]}
INPUTS = {t["name"]: t for t in CONTRACT["io"]["inputs"]}
OUTPUTS = {t["name"]: t for t in CONTRACT["io"]["outputs"]}

Config = model_config_pb2.ModelConfig

# What the backend's std::stoi / stoul / stof and its boolean parse accept, read strictly. They take a
# numeric prefix and drop the rest without a word ("0.9" is 0, "100ms" is 100), and only text with no
# number at the front throws and falls back to the default: either way a value we did not mean.
_INT = re.compile(r"-?\d+")
_CHECKS: dict[str, Callable[[str], bool]] = {
    "int": lambda v: bool(_INT.fullmatch(v)),
    "uint": lambda v: v.isdigit(),
    "float": lambda v: _is_finite_float(v),
    "bool": lambda v: v in {"True", "true", "TRUE", "1", "False", "false", "FALSE", "0"},
    "int_list": lambda v: all(_INT.fullmatch(x) for x in v.split(",")),
    "device_ids": lambda v: all(x.isdigit() for group in v.split(";") for x in group.split(",")),
    "int_list_list": lambda v: bool(re.fullmatch(r"\{-?\d+(,-?\d+)*\}(,\{-?\d+(,-?\d+)*\})*", v.replace(" ", ""))),
}


def _is_finite_float(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def render(gpu: str = "h100", model: str = "Llama-3.1-8B") -> Config:
    plan = planner.plan(hf_config.load(MODELS / model), catalog.gpu(gpu), runtime="engine")
    return text_format.Parse(engine.render_config(plan), Config())


def parameters(config: Config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def parameter_problems(params: dict[str, str]) -> list[str]:
    problems = []
    for name, spec in PARAMETERS.items():
        if spec["read"] == "required" and name not in params:
            problems.append(f"{name} missing: the backend reads it without a default ({spec['source']})")
        if spec["read"] == "required_when" and name not in params:
            if all(params.get(k, "") == v for k, v in spec["when"].items()):
                problems.append(f"{name} missing: required when {spec['when']} ({spec['source']})")
        if spec["read"] == "forbidden" and name in params:
            problems.append(f"{name} set: the backend refuses it ({spec['source']})")
    for name, value in params.items():
        spec = PARAMETERS.get(name)
        if spec is None:
            problems.append(f"{name}: a key the backend does not read")
            continue
        kind = spec["kind"]
        if kind == "enum" and value not in spec["choices"]:
            problems.append(f"{name}={value!r}: the backend accepts {spec['choices']}")
        elif kind in _CHECKS and not _CHECKS[kind](value):
            problems.append(f"{name}={value!r} is not a plain {kind}; the backend would read only a numeric prefix "
                            "of it, or fall back to its default")
        elif kind in {"string", "path"} and value == "" and "empty_means" not in spec and spec["read"] != "default":
            problems.append(f"{name} is empty, which the backend does not treat as unset")
    return problems


def tensor_problems(config: Config) -> list[str]:
    problems = []
    ours = {t.name: t for t in config.input}
    for name, t in ours.items():
        ref = INPUTS.get(name)
        if ref is None:
            problems.append(f"input {name}: not one the backend declares")
            continue
        problems += _same_tensor("input", t, ref)
    for name, ref in INPUTS.items():
        if not ref["optional"] and (name not in ours or ours[name].optional):
            problems.append(f"input {name}: required by the backend, so it must be declared and not optional")
    outs = {t.name: t for t in config.output}
    for name, t in outs.items():
        ref = OUTPUTS.get(name)
        problems += [f"output {name}: not one the backend declares"] if ref is None else _same_tensor("output", t, ref)
    problems += [f"output {n}: the backend throws without it" for n in CONTRACT["io"]["required_outputs"]
                 if n not in outs]
    return problems


def _same_tensor(kind: str, ours: model_config_pb2.ModelInput | model_config_pb2.ModelOutput, ref: dict) -> list[str]:
    problems = []
    data_type = model_config_pb2.DataType.Name(ours.data_type)
    if ref["data_type"] != "templated" and data_type != ref["data_type"]:
        problems.append(f"{kind} {ours.name}: {data_type}, the backend declares {ref['data_type']}")
    if list(ours.dims) != ref["dims"]:
        problems.append(f"{kind} {ours.name}: dims {list(ours.dims)}, the backend declares {ref['dims']}")
    return problems


# ---- the contract file itself -----------------------------------------------------------------


def test_contract_names_the_pinned_version():
    assert CONTRACT["upstream"]["version"] == catalog.versions()["tensorrt_llm"]["version"]
    for spec in CONTRACT["parameter"]:
        path = spec["source"].rsplit(":", 1)[0]
        assert path in CONTRACT["upstream"]["files"], spec["name"]
        assert spec["read"] in {"required", "default", "required_when", "forbidden"}, spec["name"]
        assert spec["kind"] in {*_CHECKS, "enum", "string", "path"}, spec["name"]
        assert (spec["read"] == "default") == ("default" in spec), spec["name"]
    assert len(PARAMETERS) == len(CONTRACT["parameter"]), "a parameter is listed twice"


SECTIONS = ("guided_decoding", "log_probs", "return_sequences")


def test_every_fact_beyond_text_names_a_recorded_file():
    for section in SECTIONS:
        for key, value in CONTRACT[section].items():
            if key.endswith("_source") or key == "tokenizer_info_read" or key == "tokenizer_info_writer":
                assert value.split(":", 1)[0] in CONTRACT["upstream"]["files"], (section, key)
        for name in [*CONTRACT[section].get("inputs", []), *CONTRACT[section].get("outputs", [])]:
            assert name in INPUTS or name in OUTPUTS, (section, name)


def test_the_three_guided_decoding_keys_are_required():
    # the finding this file exists for: without them tritonserver exits at start
    required = {n for n, p in PARAMETERS.items() if p["read"] == "required"}
    assert {"tokenizer_dir", "guided_decoding_backend", "xgrammar_tokenizer_info_path", "gpt_model_type"} == required


# ---- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu", GPU_TARGETS)
def test_rendered_parameters_meet_the_contract(gpu):
    assert parameter_problems(parameters(render(gpu))) == []


@pytest.mark.parametrize("name", sorted(n for n, p in PARAMETERS.items() if p["read"] == "required"))
def test_a_missing_required_parameter_is_found(name):
    params = parameters(render())
    del params[name]
    assert any(p.startswith(f"{name} missing") for p in parameter_problems(params))


def test_a_missing_model_path_is_found():
    params = parameters(render())
    del params["gpt_model_path"]
    assert any(p.startswith("gpt_model_path missing") for p in parameter_problems(params))
    params["encoder_model_path"] = "/models/encoder"  # an encoder-decoder model would not need it
    assert not any(p.startswith("gpt_model_path") for p in parameter_problems(params))


def test_lookahead_needs_its_three_sizes():
    params = {**parameters(render()), "decoding_mode": "lookahead"}
    missing = [p for p in parameter_problems(params) if "missing" in p]
    assert len(missing) == 3 and all("lookahead_" in p for p in missing)


def test_a_key_the_backend_does_not_read_is_found():
    params = {**parameters(render()), "FORCE_CPU_ONLY_INPUT_TENSORS": "no"}
    assert parameter_problems(params) == ["FORCE_CPU_ONLY_INPUT_TENSORS: a key the backend does not read"]


def test_worker_path_is_refused():
    params = {**parameters(render()), "worker_path": "/opt/worker"}
    assert any(p.startswith("worker_path set") for p in parameter_problems(params))


@pytest.mark.parametrize(("name", "value"), [
    ("max_beam_width", "one"), ("max_tokens_in_paged_kv_cache", "8x"), ("kv_cache_free_gpu_mem_fraction", "nan"),
    ("enable_kv_cache_reuse", "yes"), ("kv_cache_host_memory_bytes", "-1"), ("gpu_device_ids", "0,a"),
    ("max_attention_window_size", ""), ("decoding_mode", "greedy"), ("gpt_model_type", "inflight"),
])
def test_a_value_that_does_not_parse_is_found(name, value):
    params = {**parameters(render()), name: value}
    assert [p for p in parameter_problems(params) if p.startswith(f"{name}=")], (name, value)


# ---- tensors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu", GPU_TARGETS)
def test_rendered_tensors_are_the_backends(gpu):
    assert tensor_problems(render(gpu)) == []


def test_a_wrong_input_type_is_found():
    config = render()
    broken = copy.deepcopy(config)
    next(t for t in broken.input if t.name == "temperature").data_type = model_config_pb2.TYPE_FP16
    assert tensor_problems(broken) == ["input temperature: TYPE_FP16, the backend declares TYPE_FP32"]


def test_wrong_dims_and_unknown_inputs_are_found():
    broken = render()
    next(t for t in broken.input if t.name == "stop_words_list").dims[:] = [-1]
    broken.input.add(name="top_k", data_type=model_config_pb2.TYPE_INT32, dims=[1])
    problems = tensor_problems(broken)
    assert "input stop_words_list: dims [-1], the backend declares [2, -1]" in problems
    assert "input top_k: not one the backend declares" in problems


def test_a_missing_or_optional_required_input_is_found():
    broken = render()
    next(t for t in broken.input if t.name == "input_lengths").optional = True
    kept = [t for t in broken.input if t.name != "request_output_len"]
    del broken.input[:]
    broken.input.extend(kept)
    problems = tensor_problems(broken)
    assert any(p.startswith("input input_lengths: required") for p in problems)
    assert any(p.startswith("input request_output_len: required") for p in problems)


def test_a_missing_required_output_is_found():
    broken = render()
    kept = [t for t in broken.output if t.name != "sequence_length"]
    del broken.output[:]
    broken.output.extend(kept)
    assert tensor_problems(broken) == ["output sequence_length: the backend throws without it"]


def test_the_contract_says_what_builds_the_backend_it_describes():
    """The contract names the repository that builds the image's libtriton_tensorrtllm.so (server build.py
    clones triton-inference-server's fork), and says whether it was checked against that source."""
    upstream = CONTRACT["upstream"]
    assert upstream["so_built_from"] == "triton-inference-server/TensorRT-LLM"
    assert upstream["verified_against_so_source"] is (upstream["repo"] == upstream["so_built_from"])


# ---- what a request can ask for beyond text ---------------------------------------------------


def promised_tensors(capabilities: runtimes.Capabilities) -> set[str]:
    """The backend tensors a runtime must declare for what its Capabilities say it does."""
    sections = [name for name, does in (("guided_decoding", capabilities.guide_types),
                                        ("log_probs", capabilities.log_probs),
                                        ("return_sequences", capabilities.return_sequences)) if does]
    return {t for s in sections for t in [*CONTRACT[s]["inputs"], *CONTRACT[s].get("outputs", [])]}


def capability_problems(capabilities: runtimes.Capabilities, config: Config) -> list[str]:
    declared = {t.name for t in config.input} | {t.name for t in config.output}
    problems = [f"{name}: needed for what the runtime says it does, not declared"
                for name in sorted(promised_tensors(capabilities) - declared)]
    if capabilities.guide_types and set(capabilities.guide_types) != set(CONTRACT["guided_decoding"]["guide_types"]):
        problems.append(f"guide types {capabilities.guide_types}: the backend maps "
                        f"{CONTRACT['guided_decoding']['guide_types']}")
    return problems


@pytest.mark.parametrize("gpu", GPU_TARGETS)
def test_the_engine_declares_what_its_capabilities_promise(gpu):
    capabilities = engine.RUNTIME.capabilities
    assert capabilities.guide_types and capabilities.log_probs and capabilities.return_sequences
    assert capability_problems(capabilities, render(gpu)) == []
    # the backend has no top-N alternatives, so the engine promises none
    assert capabilities.top_log_probs == 0 and not CONTRACT["log_probs"]["top_alternatives"]


def test_a_capability_without_its_tensors_is_found():
    broken = render()
    kept = [t for t in broken.input if t.name != "guided_decoding_guide"]
    del broken.input[:]
    broken.input.extend(kept)
    assert capability_problems(engine.RUNTIME.capabilities, broken) == [
        "guided_decoding_guide: needed for what the runtime says it does, not declared"]
    other = runtimes.Capabilities(guide_types=("json", "xml"))
    assert any(p.startswith("guide types") for p in capability_problems(other, render()))


def test_the_engine_runs_guided_decoding_from_the_file_the_build_writes():
    params = parameters(render())
    assert params["guided_decoding_backend"] == CONTRACT["guided_decoding"]["backend"]
    assert params["xgrammar_tokenizer_info_path"] == engine.TOKENIZER_INFO_IN_POD
    assert engine.TOKENIZER_INFO_IN_POD == f"/models/{engine.VERSION_SUBDIR}/{tokenizer_info.FILE_NAME}"


def test_log_probs_are_over_the_whole_vocabulary():
    wanted = CONTRACT["log_probs"]["normalize_log_probs_for_whole_vocabulary"]
    assert parameters(render())["normalize_log_probs"] == str(wanted).lower()


def test_the_shared_guide_types_are_the_backends():
    assert list(tokenizer_info.GUIDE_TYPES) == CONTRACT["guided_decoding"]["guide_types"]


def cpu_config() -> Config:
    text = (ROOT / "model_repository" / "tensorrt_llm" / "cpu" / "config.pbtxt").read_text()
    return text_format.Parse(re.sub(r"\$\{[a-z_]+\}", "1", text), Config())


def test_the_cpu_runtime_has_the_backends_tensors_and_its_named_extensions():
    config = cpu_config()
    problems = tensor_problems(config)
    extensions = [*cpu.EXTENSION_INPUTS, *cpu.EXTENSION_OUTPUTS]
    assert sorted(problems) == sorted(f"{'input' if n in cpu.EXTENSION_INPUTS else 'output'} {n}: not one the "
                                      "backend declares" for n in extensions)
    assert capability_problems(cpu.RUNTIME.capabilities, config) == []
    assert cpu.RUNTIME.capabilities.top_log_probs == cpu.MAX_TOP_LOG_PROBS > 0


def tokenizer_info_problems(path: Path) -> list[str]:
    """The file at xgrammar_tokenizer_info_path as the backend reads it: these keys, these types."""
    info = json.loads(path.read_text())
    kinds = {"encoded_vocab": list, "tokenizer_str": str, "stop_token_ids": list}
    keys = CONTRACT["guided_decoding"]["tokenizer_info_keys"]
    return [f"{key}: missing or not a {kinds[key].__name__}" for key in keys
            if not isinstance(info.get(key), kinds[key])]


def test_the_tokenizer_info_file_is_what_the_backend_reads(cpu_repository, tmp_path):
    written = cpu_repository / "tensorrt_llm" / "1" / tokenizer_info.FILE_NAME
    assert tokenizer_info_problems(written) == []
    info = json.loads(written.read_text())
    assert info["stop_token_ids"] == [2] and info["encoded_vocab"][2] == "<|im_end|>"
    broken = tmp_path / "info.json"
    broken.write_text(json.dumps({k: v for k, v in info.items() if k != "tokenizer_str"}))
    assert tokenizer_info_problems(broken) == ["tokenizer_str: missing or not a str"]
