"""The ensemble in front of the llmapi runtime, served by the real tritonserver.

NVIDIA's llmapi model needs TensorRT-LLM and a GPU, which no machine here has, so its place is taken
by a stand-in for NVIDIA's model.py and helpers.py, under our wrapper (tensorrt_llm/1/model.py) as
the image has them; the generated config.pbtxt is kept as built. What is under test is the repository
compile.py lays out, our wrapper, and the ensemble's mapping of our API onto NVIDIA's model.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import Server, triton_server
from harness.llm_client import GrpcLlmClient, http_generate, http_generate_stream
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.triton

# NVIDIA's helpers.py where it matters to us (TensorRT-LLM triton_backend/all_models/llmapi/tensorrt_llm/1/
# helpers.py at 0df60f9a, get_sampling_params_from_request): scalars with NVIDIA's defaults, and
# sampling_param_stop passed on as the python backend hands it over, a numpy array of bytes.
STANDIN_HELPERS = '''
import triton_python_backend_utils as pb_utils

SAMPLING_PARAMS = ("best_of", "temperature", "top_k", "top_p", "frequency_penalty", "presence_penalty",
                   "max_tokens", "seed", "exclude_input_from_output", "return_perf_metrics")
SAMPLING_DEFAULTS = {"sampling_param_best_of": 1, "sampling_param_exclude_input_from_output": False,
                     "sampling_param_return_perf_metrics": False}


def get_input_scalar_by_name(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().item(0)


def get_input_tensor_by_name(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def get_sampling_params_from_request(request):
    kwargs = {}
    for arg in SAMPLING_PARAMS:
        value = get_input_scalar_by_name(request, f"sampling_param_{arg}")
        if value is None and f"sampling_param_{arg}" in SAMPLING_DEFAULTS:
            kwargs[arg] = SAMPLING_DEFAULTS[f"sampling_param_{arg}"]
        elif value is not None:
            kwargs[arg] = value
    kwargs["stop"] = get_input_tensor_by_name(request, "sampling_param_stop")
    return kwargs


def get_output_config_from_request(request):
    names = ("return_finish_reason", "return_stop_reason", "return_cumulative_logprob")
    return {name: bool(get_input_scalar_by_name(request, name)) for name in names}


def get_streaming_from_request(request):
    return get_input_scalar_by_name(request, "streaming") or False
'''

# NVIDIA's model.py where it matters to us: _convert_request decodes the prompt only and takes the
# rest from helpers.py; the stops then go through the tokenizer's encode as SamplingParams._setup does
# (tensorrt_llm/sampling_params.py), with the checkpoint's tokenizer that LLM() loads, so bytes fail
# there as in the image (tokenizers: TypeError); _create_response gets cumulative text, and an error
# is answered "Error generating request: ...". The "engine" answers "echo: <prompt>", one word a step,
# up to max_tokens, and ends at a word that is one of the stop strings; as the executor does, it puts
# the prompt before a non-streamed answer unless exclude_input_from_output is true (a stream never has it).
STANDIN_NVIDIA_MODEL = '''
import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import triton_python_backend_utils as pb_utils
from helpers import (get_input_tensor_by_name, get_output_config_from_request, get_sampling_params_from_request,
                     get_streaming_from_request)
from tokenizers import Tokenizer

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        checkpoint = Path(args["model_repository"]).parent / "tensorrt_llm" / "1" / "checkpoint"
        self.tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
        self.request_ids = itertools.count()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt, sampling_params, streaming, output_config = self._convert_request(request)
                outputs = self._generate(prompt, sampling_params, streaming)
                if streaming:
                    for output in outputs:
                        sender.send(self._create_response(output, output_config),
                                    flags=FINAL if output.finished else 0)
                else:
                    sender.send(self._create_response(outputs[-1], output_config), flags=FINAL)
            except Exception as error:
                sender.send(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"Error generating request: {error}")), flags=FINAL)
        return None

    def _convert_request(self, request):
        prompt = get_input_tensor_by_name(request, "text_input")[0]
        if isinstance(prompt, bytes):
            prompt = prompt.decode("utf-8")
        return (prompt, get_sampling_params_from_request(request), get_streaming_from_request(request),
                get_output_config_from_request(request))

    def _setup(self, stop):
        if stop is None:
            return []
        strs = [stop] if isinstance(stop, str) else stop
        for s in strs:
            self.tokenizer.encode(s, add_special_tokens=False)
        return list(strs)

    def _generate(self, prompt, params, streaming):
        stops = self._setup(params["stop"])
        words = ("echo: " + prompt).split(" ")[:params.get("max_tokens", 32)]
        ends = [i for i, word in enumerate(words) if word in stops]
        words = words[:ends[0] + 1] if ends else words
        request_id = next(self.request_ids)
        outputs = []
        for step in range(1, len(words) + 1):
            text = " ".join(words[:step])
            if not streaming and not params["exclude_input_from_output"]:
                text = prompt + text
            outputs.append(SimpleNamespace(request_id=request_id, finished=step == len(words),
                                           outputs=[SimpleNamespace(index=0, text=text)]))
        return outputs

    def _create_response(self, request_output, output_config):
        texts = [output.text.encode("utf-8") for output in request_output.outputs]
        return pb_utils.InferenceResponse([pb_utils.Tensor("text_output", np.asarray(texts, dtype=object))])
'''
NVIDIA_MODEL_DIR_LINE = 'NVIDIA_MODEL_DIR = "/app/all_models/llmapi/tensorrt_llm/1"'


@pytest.fixture(scope="module")
def llmapi_repository(cpu_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("llmapi") / "repo"
    result = subprocess.run([sys.executable, str(ROOT / "build" / "compile.py"), "--gpu", "h100", "--runtime",
                             "llmapi", "--model", str(ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct"),
                             "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def test_llmapi_repository_has_the_ensemble_alone_and_consistent_batching(llmapi_repository: Path):
    assert sorted(p.name for p in llmapi_repository.iterdir()) == ["build.json", "ensemble", "tensorrt_llm"]
    config = (llmapi_repository / "tensorrt_llm" / "config.pbtxt").read_text()
    triton_config = yaml.safe_load((llmapi_repository / "tensorrt_llm" / "1" / "model.yaml").read_text())[
        "triton_config"]
    assert f"max_batch_size: {triton_config['max_batch_size']}" in config
    assert f"decoupled: {str(triton_config['decoupled']).lower()}" in config
    assert 'string_value: "text"' in (llmapi_repository / "ensemble" / "config.pbtxt").read_text()


@pytest.fixture(scope="module")
def standin_server(llmapi_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # NVIDIA's model alone, as the image has it, beside tensorrt_llm: our wrapper loads it from there
    nvidia = llmapi_repository / "nvidia_llmapi"
    (nvidia / "1").mkdir(parents=True)
    config = (llmapi_repository / "tensorrt_llm" / "config.pbtxt").read_text()
    (nvidia / "config.pbtxt").write_text(config.replace('name: "tensorrt_llm"', 'name: "nvidia_llmapi"', 1))
    (nvidia / "1" / "model.py").write_text(STANDIN_NVIDIA_MODEL)
    (nvidia / "1" / "helpers.py").write_text(STANDIN_HELPERS)
    wrapper = llmapi_repository / "tensorrt_llm" / "1" / "model.py"
    assert NVIDIA_MODEL_DIR_LINE in wrapper.read_text()
    wrapper.write_text(wrapper.read_text().replace(NVIDIA_MODEL_DIR_LINE, f'NVIDIA_MODEL_DIR = "{nvidia / "1"}"'))
    # Two end ids, as Llama-3.1-Instruct lists three: 2 (<|im_end|>, the tokenizer's own) and 0 (<|endoftext|>)
    generation_config = llmapi_repository / "ensemble" / "1" / "tokenizer" / "generation_config.json"
    generation_config.unlink()  # a hard link to the cached model's file: replace it, never write through it
    generation_config.write_text('{"eos_token_id": [2, 0]}')
    with triton_server(llmapi_repository, tmp_path_factory.mktemp("llmapi-triton")) as server:
        yield server


def test_llmapi_ensemble_maps_our_api_onto_nvidias_model_under_our_wrapper(standin_server):
    http = standin_server.http
    status, body = http_generate(http, {"text_input": "one two three four", "max_tokens": 3})
    assert (status, body.get("text_output")) == (200, "echo: one two"), body
    request = {"text_input": "one two three four", "max_tokens": 16, "stream": True}
    sse = http_generate_stream(http, request)
    assert sse.pieces == ["echo:", " one", " two", " three", " four"]
    client = GrpcLlmClient(standin_server.grpc)
    try:
        assert client.send(request).text == "echo: one two three four"
        assert client.send({**request, "stop_words": ["two"]}).text == "echo: one two"
        assert client.send({"text_input": "x", "max_tokens": 4, "bad_words": ["y"]}).error.endswith(
            "bad_words is not supported by the llmapi runtime")
        empty = client.send({"text_input": " ", "max_tokens": 4})
        assert empty.error.endswith("text_input is empty; send the prompt text")
        assert client.send({"text_input": "still here", "max_tokens": 4}).text == "echo: still here"
        # every end id reaches the llmapi model as a stop string, beside the request's own stop words
        assert client.send({**request, "text_input": "one <|endoftext|> three"}).text == "echo: one <|endoftext|>"
        own_stop = {**request, "text_input": "a <|im_end|> b", "stop_words": ["zzz"]}
        assert client.send(own_stop).text == "echo: a <|im_end|>"
    finally:
        client.close()


def test_stops_reach_nvidias_model_as_str_through_our_wrapper_and_fail_as_bytes(standin_server):
    """Without the wrapper, the python backend's bytes reach SamplingParams._setup and the tokenizer refuses
    them, as in the image; through it the same request is answered."""
    request = {"text_input": "one two three", "sampling_param_max_tokens": 8, "sampling_param_stop": ["two"],
               "sampling_param_exclude_input_from_output": True}
    tokenizer = Tokenizer.from_file(str(standin_server.repository / "tensorrt_llm" / "1" / "checkpoint" /
                                        "tokenizer.json"))
    with pytest.raises(TypeError) as refused:
        tokenizer.encode(b"two", add_special_tokens=False)
    status, body = http_generate(standin_server.http, request, model="nvidia_llmapi")
    assert status == 400 and body["error"] == f"Error generating request: {refused.value}", (status, body)
    status, body = http_generate(standin_server.http, request, model="tensorrt_llm")
    assert (status, body.get("text_output")) == (200, "echo: one two"), body


def test_non_streamed_answers_leave_the_prompt_out_unless_asked(standin_server):
    """NVIDIA's helper defaults exclude_input_from_output to False, so NVIDIA's model alone puts the prompt
    before a non-streamed answer; through our wrapper, and so through the ensemble, it is left out."""
    http = standin_server.http
    request = {"text_input": "one two", "sampling_param_max_tokens": 8}
    assert http_generate(http, request, model="nvidia_llmapi")[1].get("text_output") == "one twoecho: one two"
    assert http_generate(http, request, model="tensorrt_llm")[1].get("text_output") == "echo: one two"
    asked = {**request, "sampling_param_exclude_input_from_output": False}
    assert http_generate(http, asked, model="tensorrt_llm")[1].get("text_output") == "one twoecho: one two"
    ours = {"text_input": "one two", "max_tokens": 8}
    assert http_generate(http, ours)[1].get("text_output") == "echo: one two"
    # asked for, the ensemble puts the prompt first itself: it streams from tensorrt_llm, which never sends it
    kept = http_generate(http, {**ours, "exclude_input_in_output": False})[1].get("text_output")
    assert kept == "one twoecho: one two"
    streamed = http_generate_stream(http, {**ours, "exclude_input_in_output": False, "stream": True})
    assert streamed.text == "echo: one two"
