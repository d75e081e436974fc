"""The ensemble in front of the llmapi runtime, served by the real tritonserver.

NVIDIA's llmapi model needs TensorRT-LLM and a GPU, which no machine here has, so its place is taken
by a stand-in with the same tensors (the generated config.pbtxt is kept as built): what is under
test is the repository compile.py lays out and the ensemble's mapping of our API onto that model.
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

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.triton

STANDIN_LLMAPI_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def text(value):
    return pb_utils.Tensor("text_output", np.array([value.encode()], dtype=object))


def value(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    """Answers "echo: <prompt>" one word per streamed delta, honouring max_tokens and stop."""

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            prompt = value(request, "text_input")[0].decode()
            words = ("echo: " + prompt).split(" ")[: int(value(request, "sampling_param_max_tokens", [16])[0])]
            for stop in value(request, "sampling_param_stop", []):
                if stop.decode() in words:
                    words = words[: words.index(stop.decode()) + 1]
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
            if bool(value(request, "streaming", [False])[0]):
                for piece in pieces:
                    sender.send(pb_utils.InferenceResponse([text(piece)]))
                sender.send(flags=FINAL)
            else:
                sender.send(pb_utils.InferenceResponse([text("".join(pieces))]), flags=FINAL)
        return None
'''


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
    (llmapi_repository / "tensorrt_llm" / "1" / "model.py").write_text(STANDIN_LLMAPI_MODEL)
    # Two end ids, as Llama-3.1-Instruct lists three: 2 (<|im_end|>, the tokenizer's own) and 0 (<|endoftext|>)
    generation_config = llmapi_repository / "ensemble" / "1" / "tokenizer" / "generation_config.json"
    generation_config.unlink()  # a hard link to the cached model's file: replace it, never write through it
    generation_config.write_text('{"eos_token_id": [2, 0]}')
    with triton_server(llmapi_repository, tmp_path_factory.mktemp("llmapi-triton")) as server:
        yield server


def test_llmapi_ensemble_maps_our_api_onto_a_standin_llmapi_model_mock(standin_server):
    http = standin_server.http
    status, body = http_generate(http, {"text_input": "one two three four", "max_tokens": 3})
    assert (status, body["text_output"]) == (200, "echo: one two")
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
