"""Whole repositories for the GPU runtimes, as far as this machine can go without TensorRT-LLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import catalog
import hf_config
import layout
import planner
import pytest
from google.protobuf import text_format
from runtimes import engine
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct"
GPU_TARGETS = [name for name, gpu in catalog.gpus().items() if "engine" in gpu.runtimes]


def standin_engine(tmp_path: Path) -> Path:
    """What trtllm-build leaves behind, in shape only (a stand-in: no TensorRT-LLM here)."""
    engine_dir = tmp_path / "engine-standin"
    engine_dir.mkdir()
    (engine_dir / "config.json").write_text(json.dumps({"version": "1.2.1", "pretrained_config": {},
                                                        "build_config": {}}))
    (engine_dir / "rank0.engine").write_bytes(b"stand-in engine bytes")
    return engine_dir


@pytest.mark.parametrize("gpu", GPU_TARGETS)
def test_engine_repository_with_a_standin_engine_parses_whole(cpu_repository: Path, tmp_path: Path, gpu: str):
    plan = planner.plan(hf_config.load(CHECKPOINT), catalog.gpu(gpu), runtime="engine")
    repository = tmp_path / "repo"
    layout.shared_models(repository, plan, CHECKPOINT, layout.Options(apply_chat_template=True), token_ids=True)
    engine.place(repository, plan, standin_engine(tmp_path), CHECKPOINT)
    configs = {p.parent.name: p.read_text() for p in sorted(repository.glob("*/config.pbtxt"))}
    assert sorted(configs) == ["ensemble", "postprocessing", "preprocessing", "tensorrt_llm"]
    for name, text in configs.items():
        assert "${" not in text, name
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert config.max_batch_size == plan.max_batch_size, name
    ensemble = text_format.Parse(configs["ensemble"], model_config_pb2.ModelConfig())
    assert ensemble.parameters["max_concurrent_requests"].string_value == str(2 * plan.max_batch_size)
    assert ensemble.parameters["tensorrt_llm_inputs"].string_value == "token_ids"
    tensorrt_llm = text_format.Parse(configs["tensorrt_llm"], model_config_pb2.ModelConfig())
    assert tensorrt_llm.backend == "tensorrtllm"
    assert tensorrt_llm.parameters["gpt_model_path"].string_value == engine.ENGINE_PATH_IN_POD
    assert (repository / engine.ENGINE_SUBDIR / "rank0.engine").read_bytes() == b"stand-in engine bytes"
    # guided decoding's tokenizer info, where the config's parameter points in the pod
    pointed = tensorrt_llm.parameters["xgrammar_tokenizer_info_path"].string_value
    written = repository / Path(pointed).relative_to(layout.POD_MODEL_REPOSITORY)
    assert json.loads(written.read_text())["stop_token_ids"] == [2]


def test_a_gpu_build_here_fails_fast_and_says_how_to_build_on_gke(cpu_repository: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "build" / "compile.py"), "--gpu", "h100", "--model",
                             str(CHECKPOINT), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "error: TensorRT-LLM is not installed here" in result.stderr
    assert "kubectl apply -k gitops/jobs/runs/" in result.stderr
    assert (f"Set MODEL to the model's Hugging Face id: {CHECKPOINT} is a folder on this machine, "
            "which the Job cannot read.") in result.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []
