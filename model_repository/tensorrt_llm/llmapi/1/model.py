"""NVIDIA's `llmapi` TensorRT-LLM model, as shipped in the pinned Triton image, with streamed deltas.

NVIDIA's model sends `CompletionOutput.text` with every streamed response, and that text is
cumulative (TensorRT-LLM triton_backend/all_models/llmapi/tensorrt_llm/1/model.py). Our API
promises streamed pieces that concatenate to the final text, so this subclass sends only the
part of the text not sent yet.
The LLM API's incremental detokenizer withholds a trailing partial character, so the text only
ever grows at its end and the pieces are exact.

It also hands `sampling_param_stop` to NVIDIA's model as str (stop_strings below says why), and
leaves the prompt out of a non-streamed answer unless the request asks for it: NVIDIA's helper
defaults `sampling_param_exclude_input_from_output` to False (helpers.py, default_values), against the
LLM API's own default of True (SamplingParams.exclude_input_from_output), and the executor then puts
the prompt's tokens before the answer's (LlmRequest::createResult, when not streaming).

Everything else (the LLM() engine from model.yaml beside this file, sampling inputs, cancellation)
is NVIDIA's code from the image, so it always matches the TensorRT-LLM version that runs it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

# In nvcr.io/nvidia/tritonserver:<release>-trtllm-python-py3 (tensorrtllm_backend dockerfile:
# "COPY … triton_backend/all_models all_models" into /app).
NVIDIA_MODEL_DIR = "/app/all_models/llmapi/tensorrt_llm/1"
EXCLUDE_INPUT = "sampling_param_exclude_input_from_output"


class TextDeltas:
    """Turns cumulative text per (request, output index) into the pieces not sent yet."""

    def __init__(self) -> None:
        self._sent: dict[tuple[object, int], str] = {}

    def delta(self, key: tuple[object, int], text: str, finished: bool) -> str:
        sent = self._sent.get(key, "")
        if not text.startswith(sent):
            raise ValueError(
                f"streamed text for {key} changed after it was sent: {sent!r} is not a prefix of {text!r}"
            )
        if finished:
            self._sent.pop(key, None)
        else:
            self._sent[key] = text
        return text[len(sent):]

    def __len__(self) -> int:
        return len(self._sent)


class _Output:
    """One CompletionOutput with its text replaced by the delta; everything else passes through."""

    def __init__(self, output: object, text: str) -> None:
        self._output = output
        self.text = text

    def __getattr__(self, name: str) -> object:
        return getattr(self._output, name)


class _RequestOutput:
    def __init__(self, request_output: object, outputs: list[_Output]) -> None:
        self._request_output = request_output
        self.outputs = outputs

    def __getattr__(self, name: str) -> object:
        return getattr(self._request_output, name)


def with_deltas(request_output, deltas: TextDeltas) -> _RequestOutput:
    finished = bool(request_output.finished)
    outputs = [
        _Output(output, deltas.delta((request_output.request_id, output.index), output.text, finished))
        for output in request_output.outputs
    ]
    return _RequestOutput(request_output, outputs)


def stop_strings(stop) -> list[str] | None:
    """sampling_param_stop as the LLM API takes it: a list of str.

    The python backend hands a TYPE_STRING input over as a numpy array of bytes, and NVIDIA's helper
    passes that array on as SamplingParams(stop=...) untouched (TensorRT-LLM
    triton_backend/all_models/llmapi/tensorrt_llm/1/helpers.py, get_sampling_params_from_request).
    SamplingParams._setup then runs each stop through the tokenizer's encode, which takes str only
    (tokenizers raises TypeError for bytes), so every request that carried a stop failed: the ensemble
    sends the end tokens as stops with every request when generation_config.json names any."""
    if stop is None:
        return None
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in np.asarray(stop, dtype=object).reshape(-1)]


def _nvidia_model_class() -> type:
    source = Path(NVIDIA_MODEL_DIR) / "model.py"
    if not source.is_file():
        raise ImportError(f"NVIDIA's llmapi model is not at {source}: the llmapi runtime runs in the pinned "
                          "Triton TRT-LLM image (build/versions.toml)")
    import triton_python_backend_utils as pb_utils  # only in Triton's python backend

    # NVIDIA's model.py imports its sibling helpers.py by name.
    sys.path.insert(0, NVIDIA_MODEL_DIR)
    spec = importlib.util.spec_from_file_location("trtllm_llmapi_model", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class TritonPythonModel(module.TritonPythonModel):
        def initialize(self, args):
            self._deltas = TextDeltas()
            super().initialize(args)

        def _convert_request(self, request):
            prompt, sampling_params, streaming, output_config = super()._convert_request(request)
            sampling_params["stop"] = stop_strings(sampling_params.get("stop"))
            if pb_utils.get_input_tensor_by_name(request, EXCLUDE_INPUT) is None:
                sampling_params["exclude_input_from_output"] = True
            return prompt, sampling_params, streaming, output_config

        def _create_response(self, request_output, output_config):
            return super()._create_response(with_deltas(request_output, self._deltas), output_config)

    return TritonPythonModel


def __getattr__(name: str) -> object:
    # Triton's python backend looks the class up when it loads the model; resolving it lazily keeps
    # the delta logic above importable (and tested) where TensorRT-LLM is not installed.
    if name == "TritonPythonModel":
        cls = _nvidia_model_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
