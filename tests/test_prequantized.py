"""ModelOpt-quantised checkpoints (NVIDIA's `nvidia/*-FP8`, `*-FP4`) are served as shipped by the llmapi runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import catalog
import hf_config
import planner
import pytest
from runtimes import llmapi

MODELS = Path(__file__).parent / "fixtures" / "models"
FP8 = MODELS / "Llama-3.1-8B-Instruct-FP8"  # config.json + hf_quant_config.json {"quant_algo": "FP8"}


def refusal(shape: hf_config.ModelShape, gpu: str, runtime: str = "llmapi", **kwargs) -> str:
    with pytest.raises(planner.PlanError) as caught:
        planner.plan(shape, catalog.gpu(gpu), runtime=runtime, **kwargs)
    return str(caught.value)


def nvfp4_checkpoint(tmp_path: Path) -> hf_config.ModelShape:
    # newer ModelOpt exports say it in config.json itself
    raw = json.loads((MODELS / "Llama-3.1-8B" / "config.json").read_text())
    raw["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "NVFP4"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return hf_config.load(tmp_path, name="Llama-3.1-8B-Instruct-FP4")


def test_hf_quant_config_names_the_precision():
    assert hf_config.load(FP8).quant_method == "fp8"


def test_fp8_checkpoint_on_h100_is_served_at_fp8_by_llmapi():
    p = planner.plan(hf_config.load(FP8), catalog.gpu("h100"), runtime="llmapi")
    # same weights and FP8 KV cache as an engine built at fp8 (tests/test_planner.py: 1,035,904 tokens)
    assert (p.precision, p.kv_cache_dtype, p.tp, p.kv_tokens) == ("fp8", "fp8", 1, 1_035_904)
    assert llmapi.model_yaml_values(p)["dtype"] == "auto"


def test_fp8_checkpoint_needs_fp8_tensor_cores():
    assert refusal(hf_config.load(FP8), "a100-80gb") == (
        "a100-80gb (compute capability 8.0) has no fp8 kernels; GPUs that serve fp8: l4, h100, h200, b200"
    )


def test_fp8_checkpoint_is_not_built_into_an_engine():
    assert refusal(hf_config.load(FP8), "h100", runtime="engine") == (
        "Llama-3.1-8B-Instruct-FP8 ships pre-quantized as fp8, which only the llmapi runtime serves; "
        "pass --runtime llmapi"
    )


def test_nvfp4_checkpoint_needs_blackwell(tmp_path):
    shape = nvfp4_checkpoint(tmp_path)
    assert planner.plan(shape, catalog.gpu("b200"), runtime="llmapi").precision == "nvfp4"
    assert refusal(shape, "h100") == (
        "h100 (compute capability 9.0) has no nvfp4 kernels; GPUs that serve nvfp4: b200"
    )


def test_unknown_modelopt_algorithm_is_refused(tmp_path):
    shutil.copy(FP8 / "config.json", tmp_path / "config.json")
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "W4A8_AWQ"}}))
    with pytest.raises(hf_config.ModelConfigError) as caught:
        hf_config.load(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'config.json'}: ModelOpt quant_algo 'W4A8_AWQ' is not one the planner knows; known: FP8, NVFP4"
    )
