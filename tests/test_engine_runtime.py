"""The engine and llmapi runtimes up to the TensorRT-LLM boundary: build commands, Triton configs that
parse as Triton's ModelConfig, model.yaml, the compile Job, and the streamed-delta wrapper.

TensorRT-LLM is on no machine here: the one test that builds a real engine is marked `gpu` and
skips, with the reason, where it is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import build_memory
import catalog
import hf_config
import planner
import pytest
import validate
import yaml
from google.protobuf import text_format
from plan import Plan
from runtimes import cpu, engine, llmapi
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).parent / "fixtures" / "models"
JOB = ROOT / "gitops" / "jobs" / "compile-engine"
GPU_TARGETS = [g.name for g in catalog.gpus().values() if not g.is_cpu]


def make_plan(model: str, gpu: str, runtime: str = "engine", **kwargs) -> Plan:
    return planner.plan(hf_config.load(MODELS / model), catalog.gpu(gpu), runtime=runtime, **kwargs)


def build_needs(plan: Plan) -> build_memory.BuildNeeds | None:
    return build_memory.needs(hf_config.load(MODELS / plan.model), catalog.gpu(plan.gpu), plan)


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def io_signature(config: model_config_pb2.ModelConfig) -> tuple:
    inputs = [(t.name, t.data_type, tuple(t.dims), t.optional, tuple(t.reshape.shape)) for t in config.input]
    outputs = [(t.name, t.data_type, tuple(t.dims)) for t in config.output]
    return inputs, outputs


# ---- config.pbtxt for every target and runtime ------------------------------------------------

RUNTIME_CASES = [(gpu, runtime) for gpu in GPU_TARGETS for runtime in catalog.gpu(gpu).runtimes]


@pytest.mark.parametrize(("gpu", "runtime"), RUNTIME_CASES)
def test_tensorrt_llm_config_parses_as_triton_model_config(gpu, runtime):
    plan = make_plan("SmolLM2-135M", gpu, runtime)
    text = engine.render_config(plan) if runtime == "engine" else llmapi.render_config(plan)
    assert "${" not in text
    config = parse_config(text)
    assert config.name == "tensorrt_llm"
    if runtime == "engine":
        assert config.backend == "tensorrtllm"
        assert config.max_batch_size == plan.max_batch_size
        assert config.model_transaction_policy.decoupled
    else:
        # the same batching and decoupling as model.yaml's triton_config, stated because tritonserver
        # runs with --disable-auto-complete-config, where NVIDIA's model would set them
        assert config.backend == "python"
        assert config.max_batch_size == 0 and config.model_transaction_policy.decoupled


@pytest.mark.parametrize("gpu", GPU_TARGETS)
def test_engine_config_sets_every_parameter_from_the_plan(gpu):
    plan = make_plan("Llama-3.1-8B", gpu)
    params = {k: v.string_value for k, v in parse_config(engine.render_config(plan)).parameters.items()}
    # the C++ backend's guided decoding reads the tokenizer info file, never tokenizer_dir (empty)
    assert all(v for k, v in params.items() if k != "tokenizer_dir"), [k for k, v in params.items() if not v]
    assert params["tokenizer_dir"] == ""
    assert params["gpt_model_path"] == "/models/tensorrt_llm/1/engine" == engine.ENGINE_PATH_IN_POD
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["max_tokens_in_paged_kv_cache"] == str(plan.kv_tokens)
    assert params["max_attention_window_size"] == str(plan.max_seq_len)
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.9"
    assert params["gpu_device_ids"] == ",".join(str(i) for i in range(plan.tp))
    # reuse and chunked context need paged context FMHA, which trtllm-build gets enabled
    build = engine.build_commands(plan, Path("/m"), Path("/w"))[1]
    assert build[build.index("--use_paged_context_fmha") + 1] == "enable"
    assert params["enable_kv_cache_reuse"] == params["enable_chunked_context"] == "true"
    assert params["exclude_input_in_output"] == "true"
    assert params["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert params["max_beam_width"] == "1"


def test_engine_and_cpu_runtimes_have_the_same_tensors():
    # the shared ensemble and the gateway talk to either runtime's tensorrt_llm model without knowing
    # which; the CPU runtime's extensions (top-N alternatives) are the only difference, and named
    cpu_text = (ROOT / "model_repository" / "tensorrt_llm" / "cpu" / "config.pbtxt").read_text()
    cpu_config = parse_config(re.sub(r"\$\{[a-z_]+\}", "1", cpu_text))
    extensions = {*cpu.EXTENSION_INPUTS, *cpu.EXTENSION_OUTPUTS}
    cpu_inputs, cpu_outputs = io_signature(cpu_config)
    gpu = parse_config(engine.render_config(make_plan("Llama-3.1-8B", "h100")))
    assert io_signature(gpu) == ([t for t in cpu_inputs if t[0] not in extensions],
                                 [t for t in cpu_outputs if t[0] not in extensions])


def test_llmapi_config_has_nvidias_streaming_and_sampling_tensors():
    config = parse_config(llmapi.render_config(make_plan("Llama-3.1-8B", "h100", "llmapi")))
    names = {t.name for t in config.input}
    assert {"text_input", "streaming", "sampling_param_max_tokens", "sampling_param_temperature",
            "sampling_param_top_k", "sampling_param_top_p", "sampling_param_stop", "sampling_param_seed",
            "sampling_param_exclude_input_from_output", "stop"} <= names
    assert [t.name for t in config.output][0] == "text_output"


def test_llmapi_takes_no_input_for_what_it_cannot_do():
    """NVIDIA's llmapi model has no guided-decoding, per-token log probability or sequence-count input
    (tools/policy/upstream_facts.toml, tensorrt_llm.llmapi_outputs): its config declares none, so Triton
    refuses them, and its capabilities promise nothing and say why."""
    config = parse_config(llmapi.render_config(make_plan("Llama-3.1-8B", "h100", "llmapi")))
    declared = {t.name for t in config.input}
    assert not declared & {"guided_decoding_guide_type", "guided_decoding_guide", "return_log_probs",
                           "num_return_sequences", "num_top_log_probs"}
    capabilities = llmapi.RUNTIME.capabilities
    assert not (capabilities.guide_types or capabilities.log_probs or capabilities.top_log_probs
                or capabilities.return_sequences)
    assert "no guided-decoding input" in capabilities.missing


# ---- model.yaml -------------------------------------------------------------------------------


def test_model_yaml_is_the_plan_as_llm_arguments():
    plan = make_plan("Llama-3.1-8B", "h100", "llmapi")
    text = llmapi.render_model_yaml(plan)
    assert "${" not in text
    assert yaml.safe_load(text) == {
        "model": "/models/tensorrt_llm/1/checkpoint",
        "tokenizer": "/models/tensorrt_llm/1/checkpoint",
        "backend": "pytorch",
        "dtype": "bfloat16",
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "max_batch_size": plan.max_batch_size,
        "max_num_tokens": plan.max_num_tokens,
        "max_input_len": 4096,
        "max_seq_len": 8192,
        "max_beam_width": 1,
        "enable_chunked_prefill": True,
        "kv_cache_config": {
            "max_tokens": plan.kv_tokens,
            "free_gpu_memory_fraction": 0.9,
            "enable_block_reuse": True,
        },
        "triton_config": {"max_batch_size": 0, "decoupled": True, "cancellation_check_period_ms": 100},
    }


@pytest.mark.parametrize("gpu", ["h100", "h200", "b200"])
def test_gpt_oss_model_yaml_keeps_its_own_quantization(gpu):
    plan = make_plan("gpt-oss-20b", gpu, "llmapi")
    values = yaml.safe_load(llmapi.render_model_yaml(plan))
    assert values["dtype"] == "auto" and values["tensor_parallel_size"] == plan.tp


def test_model_yaml_is_only_for_llmapi():
    with pytest.raises(ValueError) as caught:
        llmapi.render_model_yaml(make_plan("Llama-3.1-8B", "h100"))
    assert str(caught.value) == "model.yaml is for the llmapi runtime, not 'engine'"


# ---- build commands ---------------------------------------------------------------------------


def test_fp8_build_commands_for_llama_8b_on_h100():
    plan = make_plan("Llama-3.1-8B", "h100")
    assert engine.build_commands(plan, Path("/src/Llama-3.1-8B"), Path("/work/build")) == [
        ["python3", "/app/examples/quantization/quantize.py",
         "--model_dir", "/src/Llama-3.1-8B", "--output_dir", "/work/build/checkpoint",
         "--dtype", "bfloat16", "--qformat", "fp8", "--kv_cache_dtype", "fp8", "--calib_size", "512",
         "--tp_size", "1", "--pp_size", "1"],
        ["trtllm-build", "--checkpoint_dir", "/work/build/checkpoint", "--output_dir", "/work/build/engine",
         "--max_batch_size", "1011", "--max_input_len", "4096", "--max_seq_len", "8192",
         "--max_num_tokens", "9203", "--max_beam_width", "1", "--kv_cache_type", "paged",
         "--tokens_per_block", "32", "--gemm_plugin", "disable", "--use_paged_context_fmha", "enable",
         "--use_fp8_context_fmha", "enable", "--multiple_profiles", "enable", "--workers", "1"],
    ]


def test_bf16_build_commands_for_llama_70b_over_four_h100s():
    plan = make_plan("Llama-3.1-70B", "h100", precision="bf16")
    # planner: TP 2 holds the 131.4 GiB of bf16 weights but leaves KV only 0.07 of what is free after
    # headroom; TP 4 is the smallest with a KV share >= 1/3 (0.52): 489,696 KV tokens / 1024 average
    # tokens per sequence -> max_batch_size 478, max_num_tokens 478 + 8192
    assert engine.build_commands(plan, Path("/src/Llama-3.1-70B"), Path("/work/build")) == [
        ["python3", "/app/examples/models/core/llama/convert_checkpoint.py",
         "--model_dir", "/src/Llama-3.1-70B", "--output_dir", "/work/build/checkpoint",
         "--dtype", "bfloat16", "--tp_size", "4", "--pp_size", "1", "--workers", "4"],
        ["trtllm-build", "--checkpoint_dir", "/work/build/checkpoint", "--output_dir", "/work/build/engine",
         "--max_batch_size", "478", "--max_input_len", "4096", "--max_seq_len", "8192",
         "--max_num_tokens", "8670", "--max_beam_width", "1", "--kv_cache_type", "paged",
         "--tokens_per_block", "32", "--gemm_plugin", "auto", "--use_paged_context_fmha", "enable",
         "--use_fp8_context_fmha", "disable", "--multiple_profiles", "enable", "--workers", "4"],
    ]


def test_int4_awq_on_a100_quantizes_with_128_weight_groups_and_keeps_a_16_bit_kv_cache():
    plan = make_plan("Qwen2.5-7B", "a100-40gb", precision="int4_awq")
    quantize = engine.build_commands(plan, Path("/src/q"), Path("/w"))[0]
    assert quantize == [
        "python3", "/app/examples/quantization/quantize.py", "--model_dir", "/src/q",
        "--output_dir", "/w/checkpoint", "--dtype", "bfloat16", "--qformat", "int4_awq",
        "--awq_block_size", "128", "--calib_size", "512", "--tp_size", "1", "--pp_size", "1",
    ]


def test_qwen_converts_with_its_own_family_script():
    plan = make_plan("Qwen2.5-7B", "a100-80gb", precision="fp16")
    assert engine.build_commands(plan, Path("/m"), Path("/w"))[0][:2] == [
        "python3", "/app/examples/models/core/qwen/convert_checkpoint.py"]


def test_build_commands_are_only_for_the_engine_runtime():
    with pytest.raises(ValueError) as caught:
        engine.build_commands(make_plan("Llama-3.1-8B", "h100", "llmapi"), Path("/m"), Path("/w"))
    assert str(caught.value) == "build_commands is for the engine runtime, not 'llmapi'"


# ---- where TensorRT-LLM is missing ------------------------------------------------------------

EXPECTED_OVERLAY = """\
# Builds Llama-3.1-70B for h100 (fp8, TP 2) and publishes it.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../compile-engine
configMapGenerator:
  - name: compile-engine-params
    behavior: replace
    literals:
      - GPU=h100
      - MODEL=meta-llama/Llama-3.1-70B-Instruct
      - PUBLISH=gs://acme-models/llm
      - EXTRA_ARGS=--runtime engine --precision fp8 --tp 2 --max-seq-len 8192
# The image built from this checkout (gitops/jobs/compile-engine/cloudbuild.yaml), by digest.
images:
  - name: us-docker.pkg.dev/example-project/gke-triton-llm/compile-engine
    digest: sha256:0000000000000000000000000000000000000000000000000000000000000000
patches:
  - target:
      kind: Job
      name: compile-engine
    patch: |-
      apiVersion: batch/v1
      kind: Job
      metadata:
        name: compile-engine
      spec:
        template:
          spec:
            nodeSelector:
              cloud.google.com/gke-accelerator: nvidia-h100-80gb
              cloud.google.com/compute-class: triton-build-h100
            containers:
              - name: compile
                resources:
                  requests:
                    cpu: "92"
                    memory: 800Gi
                    nvidia.com/gpu: "4"
                  limits:
                    memory: 800Gi
                    nvidia.com/gpu: "4"
  - target:
      kind: Job
      name: compile-engine
    patch: |-
      - op: replace
        path: /metadata/name
        value: compile-h100-llama-3-1-70b
"""


def test_engine_unavailable_message_gives_the_job_to_run():
    plan = make_plan("Llama-3.1-70B", "h100")
    # Served over 2 H100s, but FP8 calibration holds 1.5 x the 141 GB 16-bit model: the Job takes 4.
    assert (plan.tp, build_needs(plan).build_gpus) == (2, 4)
    message = engine.unavailable_message(
        plan, ["no tensorrt_llm Python module", "no trtllm-build on PATH"], build=build_needs(plan),
        model_source="meta-llama/Llama-3.1-70B-Instruct", publish="gs://acme-models/llm",
        source_revision="0123456789abcdef0123456789abcdef01234567",
    )
    assert message == (
        "TensorRT-LLM is not installed here (no tensorrt_llm Python module; no trtllm-build on PATH). "
        "Engines are built on the GPU that serves them, in "
        "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3. Build this one on GKE with the Job in "
        "gitops/jobs/compile-engine/, from the repository root:\n\n"
        "mkdir -p gitops/jobs/runs/compile-h100-llama-3-1-70b\n"
        "cat > gitops/jobs/runs/compile-h100-llama-3-1-70b/kustomization.yaml <<'EOF'\n"
        + EXPECTED_OVERLAY
        + "EOF\n"
        "kubectl apply -k gitops/jobs/runs/compile-h100-llama-3-1-70b\n"
        "kubectl -n triton-build logs -f job/compile-h100-llama-3-1-70b\n\n"
        "`images:` pins the compile image by the digest gitops/jobs/compile-engine pins "
        f"(sha256:{'0' * 64}). If that is not a build of this checkout, build the Job's image (the Job "
        "installs nothing itself): gcloud builds submit --config gitops/jobs/compile-engine/cloudbuild.yaml "
        "--substitutions=_IMAGE=us-docker.pkg.dev/example-project/gke-triton-llm/compile-engine:0123456789ab . "
        "and pin the digest it prints: python tools/pin_image.py "
        "us-docker.pkg.dev/example-project/gke-triton-llm/compile-engine@sha256:<digest> gitops/jobs/compile-engine "
        "gitops/jobs/runs/compile-h100-llama-3-1-70b"
    )


def test_engine_unavailable_message_says_what_to_fill_in_without_publish_or_remote():
    plan = make_plan("SmolLM2-135M", "l4")
    message = engine.unavailable_message(
        plan, ["no trtllm-build on PATH"], build=build_needs(plan), model_source="/data/SmolLM2-135M",
        publish=None, source_revision=None,
    )
    assert "      - PUBLISH=gs://REPLACE-ME/models\n" in message
    assert message.endswith(
        "Set PUBLISH to your bucket: compile.py was run without --publish.\n"
        "`images:` pins the compile image by the digest gitops/jobs/compile-engine pins "
        f"(sha256:{'0' * 64}). If that is not a build of this checkout, build the Job's image (the Job "
        "installs nothing itself): gcloud builds submit --config gitops/jobs/compile-engine/cloudbuild.yaml "
        "--substitutions=_IMAGE=us-docker.pkg.dev/example-project/gke-triton-llm/compile-engine:TAG . "
        "and pin the digest it prints: python tools/pin_image.py "
        "us-docker.pkg.dev/example-project/gke-triton-llm/compile-engine@sha256:<digest> gitops/jobs/compile-engine "
        "gitops/jobs/runs/compile-l4-smollm2-135m"
    )


def test_engine_unavailable_message_when_no_node_of_the_gpu_can_build_it():
    plan = make_plan("Llama-3.1-70B", "l4")  # served over 8 L4s; 8 x 22.5 GiB cannot calibrate 211 GiB
    message = engine.unavailable_message(plan, ["no trtllm-build on PATH"], build=build_needs(plan),
                                         model_source="org/m", publish=None, source_revision=None)
    assert message.startswith("TensorRT-LLM is not installed here (no trtllm-build on PATH), and no l4 node "
                              "can build this plan either: calibration needs 1.5 x the 16-bit model")
    assert "nvidia/<model>-FP8" in message and "kubectl apply" not in message


@pytest.mark.skipif(not engine.missing_tools(), reason="TensorRT-LLM is installed here")
def test_run_without_tensorrt_llm_fails_fast_with_the_job(tmp_path):
    plan = make_plan("SmolLM2-135M", "h100")
    with pytest.raises(engine.EngineUnavailableError) as caught:
        engine.run(plan, MODELS / "SmolLM2-135M", tmp_path, build=build_needs(plan),
                   model_source="HuggingFaceTB/SmolLM2-135M")
    assert str(caught.value).startswith("TensorRT-LLM is not installed here (")
    assert "kubectl apply -k gitops/jobs/runs/compile-h100-smollm2-135m\n" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


# ---- the compile Job kustomization ------------------------------------------------------------

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) is not installed")


def kustomize(path: Path) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


@needs_kubectl
def test_compile_job_base_renders_for_its_example_gpu():
    docs = kustomize(JOB)
    job, params = by_kind(docs, "Job"), by_kind(docs, "ConfigMap")["data"]
    pod = job["spec"]["template"]["spec"]
    compile_container = pod["containers"][0]
    # the example values agree with the catalog, like every overlay does
    h100 = catalog.gpu(params["GPU"])
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": h100.accelerator,
                                   "cloud.google.com/compute-class": f"triton-build-{h100.name}"}
    assert compile_container["resources"]["requests"] == {
        "cpu": str(h100.pod_cpu), "memory": f"{h100.pod_memory_gib}Gi", "nvidia.com/gpu": "1"}
    # the image that builds is ours, built FROM the image that serves (the next test)
    assert [c["image"] for c in pod["containers"]] == [
        f"us-docker.pkg.dev/example-project/gke-triton-llm/compile-engine@sha256:{'0' * 64}"]
    assert "initContainers" not in pod
    assert job["metadata"]["namespace"] == "triton-build"
    assert pod["serviceAccountName"] == by_kind(docs, "ServiceAccount")["metadata"]["name"]


def test_compile_job_image_is_built_from_the_image_versions_toml_pins():
    # FROM the build ARG the compile cloudbuild derives from build/versions.toml: its Triton image's scanned
    # copy by the [triton] digest (tests/test_image_builds.py runs that step), never nvcr.io's tag.
    lines = (JOB / "Dockerfile").read_text().splitlines()
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM ${TRITON_IMAGE}"]
    assert "ARG TRITON_IMAGE" in lines
    assert catalog.triton_image() not in "\n".join(line for line in lines if not line.startswith("#"))


@needs_kubectl
def test_the_printed_job_overlay_passes_the_image_rules_naming_its_stand_in_then_pins_the_real_digest(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What unavailable_message prints, written where it says, validated as a user would before applying it.
    plan = make_plan("SmolLM2-135M", "l4")
    run_dir = repo / engine.RUNS_DIR / engine.job_name(plan)
    run_dir.mkdir(parents=True)

    def overlay() -> str:  # read again once the base is pinned
        return engine.job_kustomization(plan, build_gpus=1, model_source="org/m", publish="gs://b/p",
                                        image_digest=engine.job_image_digest())

    (run_dir / "kustomization.yaml").write_text(overlay())
    [found] = validate.validate(repo, validate.VENDORED_CRDS, [run_dir])
    zero = f"sha256:{'0' * 64}"
    assert found.problems == []  # the stand-in is a digest, not "not pinned by digest"
    assert found.placeholders == (
        f"image '{engine.job_image()}@{zero}' (Job/{engine.job_name(plan)} compile): project example-project and "
        "the all-zero digest (docs/runbook.md steps 3b, 8)",)
    [refused] = validate.validate(repo, validate.VENDORED_CRDS, [run_dir], before_push=True)
    assert refused.problems == [f"placeholder: {found.placeholders[0]}"]
    # Once tools/pin_image.py pinned a gated build in the base, the printed overlay carries that digest.
    monkeypatch.setattr(engine.layout, "ROOT", repo)
    real = "us-docker.pkg.dev/my-project/gke-triton-llm/compile-engine@sha256:" + "cd" * 32
    pin = [sys.executable, str(ROOT / "tools" / "pin_image.py"), real, str(repo / "gitops/jobs/compile-engine")]
    assert subprocess.run(pin, capture_output=True, text=True).returncode == 0
    assert engine.job_image_digest() == "sha256:" + "cd" * 32
    assert "    digest: sha256:" + "cd" * 32 + "\n" in overlay()


@needs_kubectl
@pytest.mark.parametrize(("model", "gpu", "kwargs"), [
    ("Llama-3.1-70B", "h100", {}),  # served by 2, calibrated on 4
    ("Llama-3.1-8B", "h200", {"precision": "bf16"}),
])
def test_printed_job_overlay_renders_the_planned_build(tmp_path, model, gpu, kwargs):
    plan = make_plan(model, gpu, **kwargs)
    gpus = build_needs(plan).build_gpus
    shutil.copytree(ROOT / "gitops", tmp_path / "gitops")
    run_dir = tmp_path / engine.RUNS_DIR / engine.job_name(plan)
    run_dir.mkdir(parents=True)
    (run_dir / "kustomization.yaml").write_text(engine.job_kustomization(
        plan, build_gpus=gpus, model_source=f"org/{model}", publish="gs://b/p", image_digest="sha256:" + "ab" * 32))
    docs = kustomize(run_dir)
    job, params = by_kind(docs, "Job"), by_kind(docs, "ConfigMap")
    pod = job["spec"]["template"]["spec"]
    target = catalog.gpu(gpu)
    assert job["metadata"]["name"] == engine.job_name(plan)
    assert pod["containers"][0]["image"] == f"{engine.job_image()}@sha256:{'ab' * 32}"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": target.accelerator,
                                   "cloud.google.com/compute-class": f"triton-build-{gpu}"}
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": str(target.pod_cpu * gpus), "memory": f"{target.pod_memory_gib * gpus}Gi",
                     "nvidia.com/gpu": str(gpus)},
        "limits": {"memory": f"{target.pod_memory_gib * gpus}Gi", "nvidia.com/gpu": str(gpus)},
    }
    assert params["data"]["GPU"] == gpu and params["data"]["MODEL"] == f"org/{model}"
    assert params["data"]["EXTRA_ARGS"] == (
        f"--runtime engine --precision {plan.precision} --tp {plan.tp} --max-seq-len {plan.max_seq_len}")
    # the Job reads the overlay's params, not the base's example
    env_from = pod["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    assert env_from == params["metadata"]["name"]
    # and it validates where the message puts it: a build ComputeClass has a node with its GPUs
    [result] = validate.validate(tmp_path, validate.VENDORED_CRDS, [run_dir])
    assert result.problems == []


# ---- the llmapi model's streamed deltas -------------------------------------------------------


def load_llmapi_model():
    path = ROOT / "model_repository" / "tensorrt_llm" / "llmapi" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("llmapi_model_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def request_output(request_id, texts, finished):
    """Stands in for TensorRT-LLM's RequestOutput, which cannot exist here."""
    outputs = [SimpleNamespace(index=i, text=t, finish_reason="stop" if finished else None)
               for i, t in enumerate(texts)]
    return SimpleNamespace(request_id=request_id, outputs=outputs, finished=finished, prompt="p")


def test_streamed_cumulative_text_becomes_pieces_that_concatenate_to_it():
    model = load_llmapi_model()
    deltas = model.TextDeltas()
    cumulative = ["Bon", "Bonjour", "Bonjour, le", "Bonjour, le café ☕"]
    pieces = [model.with_deltas(request_output(7, [text], finished=i == len(cumulative) - 1), deltas)
              for i, text in enumerate(cumulative)]
    assert [p.outputs[0].text for p in pieces] == ["Bon", "jour", ", le", " café ☕"]
    assert "".join(p.outputs[0].text for p in pieces) == cumulative[-1]
    # everything but the text passes through, and a finished request leaves no state behind
    assert pieces[-1].outputs[0].finish_reason == "stop" and pieces[-1].prompt == "p"
    assert len(deltas) == 0


def test_non_streamed_answer_is_the_whole_text():
    model = load_llmapi_model()
    deltas = model.TextDeltas()
    assert model.with_deltas(request_output(1, ["Hello there"], True), deltas).outputs[0].text == "Hello there"


def test_interleaved_streams_and_several_outputs_keep_apart():
    model = load_llmapi_model()
    deltas = model.TextDeltas()
    model.with_deltas(request_output(1, ["a", "x"], False), deltas)
    model.with_deltas(request_output(2, ["q"], False), deltas)
    second = model.with_deltas(request_output(1, ["ab", "xy"], False), deltas)
    assert [o.text for o in second.outputs] == ["b", "y"]
    assert model.with_deltas(request_output(2, ["qr"], True), deltas).outputs[0].text == "r"


def test_text_that_rewrites_what_was_sent_is_an_error():
    model = load_llmapi_model()
    deltas = model.TextDeltas()
    deltas.delta((1, 0), "Hello", False)
    with pytest.raises(ValueError) as caught:
        deltas.delta((1, 0), "Help", False)
    assert str(caught.value) == (
        "streamed text for (1, 0) changed after it was sent: 'Hello' is not a prefix of 'Help'")


@pytest.mark.skipif(Path("/app/all_models/llmapi/tensorrt_llm/1/model.py").exists(),
                    reason="this is the Triton TRT-LLM image")
def test_llmapi_model_outside_the_image_says_where_it_runs():
    model = load_llmapi_model()
    with pytest.raises(ImportError) as caught:
        model.TritonPythonModel  # noqa: B018 - the attribute lookup is what Triton does
    assert str(caught.value) == (
        "NVIDIA's llmapi model is not at /app/all_models/llmapi/tensorrt_llm/1/model.py: the llmapi runtime "
        "runs in the pinned Triton TRT-LLM image (build/versions.toml)"
    )


# ---- the real build, where TensorRT-LLM and a GPU exist ---------------------------------------


def _local_target() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap,memory.total", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        return None
    cc, mib = (v.strip() for v in done.stdout.splitlines()[0].split(","))
    # the catalog GPU with this compute capability whose memory is closest to the card's
    same = [g for g in catalog.gpus().values() if g.compute_capability == cc]
    return min(same, key=lambda g: abs(g.memory_gib * 1024 - int(mib))).name if same else None


def _gpu_test_blocker() -> str | None:
    if engine.missing_tools():
        return f"TensorRT-LLM is not installed here ({'; '.join(engine.missing_tools())})"
    if _local_target() is None:
        return "no NVIDIA GPU of a catalog target here"
    if shutil.which("tritonserver") is None:
        return "no tritonserver with the TensorRT-LLM backend on PATH"
    served = Path(engine.POD_MODEL_REPOSITORY)
    if not (served.is_dir() and os.access(served, os.W_OK)):
        return f"needs a writable {served}, where the engine's config.pbtxt points, as in the pod"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_test_blocker() is not None, reason=str(_gpu_test_blocker()))
def test_real_engine_build_serves_a_streamed_answer():
    """In the pinned image on a GPU: compile SmolLM2 from the hub into /models, serve it, stream an answer."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    target = _local_target()
    out = Path(engine.POD_MODEL_REPOSITORY)
    # the hub id: a GPU node reaches the hub, and the image has no gguf to convert the embedded GGUF
    done = subprocess.run([sys.executable, str(ROOT / "build" / "compile.py"), "--gpu", target, "--model",
                           "HuggingFaceTB/SmolLM2-135M-Instruct", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    build = json.loads((out / "build.json").read_text())
    assert build["runtime"] == "engine" and build["target"]["gpu"] == target
    assert (out / engine.ENGINE_SUBDIR / "config.json").is_file()

    server = subprocess.Popen(["tritonserver", f"--model-repository={out}", "--grpc-port=18001",
                               "--http-port=18000", "--metrics-port=18002"])
    try:
        client = grpcclient.InferenceServerClient("127.0.0.1:18001")
        for _ in range(600):
            if server.poll() is None and client.is_server_ready():
                break
            time.sleep(1)
        pieces: list[object] = []
        client.start_stream(callback=lambda result, error: pieces.append(
            error if error else result.as_numpy("text_output")[0].decode()))
        inputs = []
        for name, array, dtype in [
            ("text_input", np.array([["What is the capital of France?"]], dtype=object), "BYTES"),
            ("max_tokens", np.array([[16]], dtype=np.int32), "INT32"),
            ("stream", np.array([[True]], dtype=bool), "BOOL"),
        ]:
            tensor = grpcclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        client.async_stream_infer("ensemble", inputs)
        client.stop_stream()
        assert pieces and all(isinstance(p, str) for p in pieces), pieces
        assert "".join(pieces).strip()
    finally:
        server.terminate()
        server.wait(timeout=60)
