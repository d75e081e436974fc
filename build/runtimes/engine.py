"""The `engine` runtime: build a TensorRT-LLM engine for the plan and fill the C++ backend's config.

The build runs inside the pinned Triton TRT-LLM image (build/versions.toml), on the GPU it targets:
engines are tied to the compute capability and TensorRT version they were built with (the engine's
config.json records the TensorRT-LLM version, and `run` checks it against the pin). Where
TensorRT-LLM is missing, `run` raises EngineUnavailableError with the Kubernetes Job that builds it on GKE instead.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import build_memory
import catalog
import layout
import templating
import tokenizer_info  # model_repository/common, on the path from build/layout.py
from hf_config import ARCHITECTURES, ModelShape
from memory import PREQUANTIZED_MIN_CC, TOKENS_PER_BLOCK
from plan import Plan

from runtimes import Capabilities, Runtime, StepError, write_tokenizer_info

TEMPLATE = layout.TEMPLATES / "tensorrt_llm" / "engine" / "config.pbtxt"
JOB_DIR = "gitops/jobs/compile-engine"
RUNS_DIR = "gitops/jobs/runs"  # one overlay per build; kustomize refuses an overlay inside its base

# The C++ backend needs the engine on local disk, where the pod has the repository.
VERSION_SUBDIR = "tensorrt_llm/1"  # inside a built repository
ENGINE_SUBDIR = f"{VERSION_SUBDIR}/engine"
ENGINE_PATH_IN_POD = f"{layout.POD_MODEL_REPOSITORY}/{ENGINE_SUBDIR}"
# Guided decoding's tokenizer description, beside the engine (model_repository/common/tokenizer_info.py).
TOKENIZER_INFO_IN_POD = f"{layout.POD_MODEL_REPOSITORY}/{VERSION_SUBDIR}/{tokenizer_info.FILE_NAME}"

# Paths inside the pinned image: /app/examples is TensorRT-LLM's examples/ tree
# (tensorrtllm_backend dockerfile/Dockerfile.triton.trt_llm_backend, "COPY … examples examples"),
# laid out as examples/models/core/<family>/convert_checkpoint.py since TRT-LLM 0.18.
PYTHON = "python3"
EXAMPLES = "/app/examples"
QUANTIZE_SCRIPT = f"{EXAMPLES}/quantization/quantize.py"
EXECUTOR_WORKER = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"

# precision -> (quantize.py --qformat, --kv_cache_dtype or None), as TensorRT-LLM's examples/quantization names them
QFORMATS: dict[str, tuple[str, str | None]] = {
    "fp8": ("fp8", "fp8"),
    "nvfp4": ("nvfp4", "fp8"),
    "int8_wo": ("int8_wo", None),
    "int4_awq": ("int4_awq", None),
}
CONVERT_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
QUANTIZED_BASE_DTYPE = "bfloat16"  # what ModelOpt keeps unquantized (embeddings, norms, lm_head)
CALIB_SIZE = 512  # ModelOpt's default calibration sample count, stated so the build log shows it
AWQ_BLOCK_SIZE = 128  # the planner's int4_awq bytes assume one fp16 scale per 128 weights
# Paged context FMHA is what KV-cache reuse and chunked context need; both are on in config.pbtxt.
PAGED_CONTEXT_FMHA = True


class EngineError(StepError):
    """An engine build that cannot start or did not succeed."""


class EngineUnavailableError(EngineError):
    """TensorRT-LLM is not installed here; the message says how to build on GKE instead."""


def _gemm_plugin(precision: str) -> str:
    # FP8 GEMMs are faster without the plugin except at tiny batch sizes.
    return "disable" if precision == "fp8" else "auto"


def build_commands(plan: Plan, model_dir: Path, work_dir: Path) -> list[list[str]]:
    """The checkpoint step (ModelOpt quantize.py or the family's convert_checkpoint.py), then trtllm-build."""
    if plan.runtime != "engine":
        raise ValueError(f"build_commands is for the engine runtime, not {plan.runtime!r}")
    family = ARCHITECTURES[plan.architecture]
    if family is None:
        raise EngineError(f"{plan.architecture} has no TensorRT-LLM engine recipe; use the llmapi runtime")
    checkpoint, engine = work_dir / "checkpoint", work_dir / "engine"
    parallel = ["--tp_size", str(plan.tp), "--pp_size", str(plan.pp)]
    if plan.precision in QFORMATS:
        qformat, kv_cache_dtype = QFORMATS[plan.precision]
        convert = [
            PYTHON, QUANTIZE_SCRIPT,
            "--model_dir", str(model_dir),
            "--output_dir", str(checkpoint),
            "--dtype", QUANTIZED_BASE_DTYPE,
            "--qformat", qformat,
            *(["--kv_cache_dtype", kv_cache_dtype] if kv_cache_dtype else []),
            *(["--awq_block_size", str(AWQ_BLOCK_SIZE)] if qformat == "int4_awq" else []),
            "--calib_size", str(CALIB_SIZE),
            *parallel,
        ]
    elif plan.precision in CONVERT_DTYPES:
        convert = [
            PYTHON, f"{EXAMPLES}/models/core/{family}/convert_checkpoint.py",
            "--model_dir", str(model_dir),
            "--output_dir", str(checkpoint),
            "--dtype", CONVERT_DTYPES[plan.precision],
            *parallel,
            "--workers", str(plan.tp * plan.pp),
        ]
    else:
        raise EngineError(f"precision {plan.precision} has no engine build recipe")
    fp8_attention = plan.kv_cache_dtype == "fp8"
    build = [
        "trtllm-build",
        "--checkpoint_dir", str(checkpoint),
        "--output_dir", str(engine),
        "--max_batch_size", str(plan.max_batch_size),
        "--max_input_len", str(plan.max_input_len),
        "--max_seq_len", str(plan.max_seq_len),
        "--max_num_tokens", str(plan.max_num_tokens),
        "--max_beam_width", "1",
        "--kv_cache_type", "paged",
        "--tokens_per_block", str(TOKENS_PER_BLOCK),
        "--gemm_plugin", _gemm_plugin(plan.precision),
        "--use_paged_context_fmha", "enable" if PAGED_CONTEXT_FMHA else "disable",
        "--use_fp8_context_fmha", "enable" if fp8_attention else "disable",
        "--multiple_profiles", "enable",
        "--workers", str(plan.tp * plan.pp),
    ]
    return [convert, build]


def config_values(plan: Plan) -> dict[str, object]:
    """Every value of the tensorrt_llm config.pbtxt, from the plan and the choices above."""
    return {
        "max_batch_size": plan.max_batch_size,
        "max_queue_delay_microseconds": 0,  # IFB adds requests to the running batch anyway
        "max_queue_size": 0,  # unbounded: the HPA scales on the waiting count instead of rejecting
        "gpt_model_path": ENGINE_PATH_IN_POD,
        "batching_strategy": "inflight_fused_batching",
        "executor_worker_path": EXECUTOR_WORKER,
        "gpu_device_ids": ",".join(str(i) for i in range(plan.tp * plan.pp)),
        "max_beam_width": 1,
        "decoding_mode": "top_k_top_p",
        "batch_scheduler_policy": "guaranteed_no_evict",  # a started request always finishes
        "max_tokens_in_paged_kv_cache": plan.kv_tokens,
        "kv_cache_free_gpu_mem_fraction": plan.kv_cache_free_gpu_mem_fraction,
        "kv_cache_host_memory_bytes": 0,
        "kv_cache_onboard_blocks": True,
        "max_attention_window_size": plan.max_seq_len,
        "sink_token_length": 0,
        "enable_kv_cache_reuse": PAGED_CONTEXT_FMHA,
        "enable_chunked_context": PAGED_CONTEXT_FMHA,
        "exclude_input_in_output": True,
        # False: output_log_probs is each token's log probability over the whole vocabulary (after the
        # penalties, temperature and the grammar mask), as OpenAI's logprobs are, and cum_log_probs their
        # sum; true would renormalize each over the top-k candidates only, so a greedy token would get 0
        # (build/tensorrtllm_backend.toml [log_probs]). The CPU runtime returns the same.
        "normalize_log_probs": False,
        "enable_context_fmha_fp32_acc": False,
        "multi_block_mode": True,
        "cuda_graph_mode": False,
        "cancellation_check_period_ms": 100,
        "stats_check_period_ms": 100,
        "iter_stats_max_iterations": 1000,
        "request_stats_max_iterations": 0,
        # Read without a default (build/tensorrtllm_backend.toml): guided decoding with xgrammar, from the
        # tokenizer info file the build writes beside the engine; the C++ path ignores tokenizer_dir.
        "tokenizer_dir": "",
        "guided_decoding_backend": "xgrammar",
        "xgrammar_tokenizer_info_path": TOKENIZER_INFO_IN_POD,
    }


def render_config(plan: Plan) -> str:
    return templating.fill(TEMPLATE.read_text(), config_values(plan), source=str(TEMPLATE.relative_to(layout.ROOT)))


# ---- building on GKE --------------------------------------------------------------------------


def job_name(plan: Plan) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", f"compile-{plan.gpu}-{plan.model}".lower()).strip("-")
    return slug[:63].rstrip("-")


def _job_image_entry() -> dict:
    """The base kustomization's `images:` entry for the compile Job's image."""
    import yaml  # only where a Job overlay is printed: the Job's own image needs no pyyaml

    kustomization = yaml.safe_load((layout.ROOT / JOB_DIR / "kustomization.yaml").read_text())
    return next(i for i in kustomization["images"] if i["name"] == "compile-engine")


def job_image() -> str:
    """The compile Job's image name (without tag), as the base kustomization sets it."""
    return _job_image_entry()["newName"]


def job_image_digest() -> str:
    """The digest the base pins the compile image by: the one tools/pin_image.py wrote after a gated build,
    or this template's all-zero stand-in, which tools/validate.py reports and --before-push refuses."""
    return _job_image_entry()["digest"]


def job_kustomization(plan: Plan, *, build_gpus: int, model_source: str, publish: str, image_digest: str) -> str:
    """The overlay of gitops/jobs/compile-engine that builds exactly this plan on its GPU node pool.

    build_gpus is the build's own peak (build_memory.needs), not the serving TP: calibrating a 70B
    model in FP8 takes four H100s though two serve it."""
    gpu = catalog.gpu(plan.gpu)
    gpus = build_gpus
    extra = f"--runtime engine --precision {plan.precision} --tp {plan.tp} --max-seq-len {plan.max_seq_len}"
    return f"""\
# Builds {plan.model} for {plan.gpu} ({plan.precision}, TP {plan.tp}) and publishes it.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../compile-engine
configMapGenerator:
  - name: compile-engine-params
    behavior: replace
    literals:
      - GPU={plan.gpu}
      - MODEL={model_source}
      - PUBLISH={publish}
      - EXTRA_ARGS={extra}
# The image built from this checkout (gitops/jobs/compile-engine/cloudbuild.yaml), by digest.
images:
  - name: {job_image()}
    digest: {image_digest}
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
              cloud.google.com/gke-accelerator: {gpu.accelerator}
              cloud.google.com/compute-class: triton-build-{gpu.name}
            containers:
              - name: compile
                resources:
                  requests:
                    cpu: "{gpu.pod_cpu * gpus}"
                    memory: {gpu.pod_memory_gib * gpus}Gi
                    nvidia.com/gpu: "{gpus}"
                  limits:
                    memory: {gpu.pod_memory_gib * gpus}Gi
                    nvidia.com/gpu: "{gpus}"
  - target:
      kind: Job
      name: compile-engine
    patch: |-
      - op: replace
        path: /metadata/name
        value: {job_name(plan)}
"""


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(layout.ROOT), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def unavailable_message(
    plan: Plan, missing: list[str], *, build: build_memory.BuildNeeds | None, model_source: str,
    publish: str | None, source_revision: str | None,
) -> str:
    if build is not None and build.build_gpus == 0:
        return (f"TensorRT-LLM is not installed here ({'; '.join(missing)}), and no {plan.gpu} node can build "
                f"this plan either: {build.problem}.")
    notes = []
    if Path(model_source).expanduser().exists():
        notes.append(f"Set MODEL to the model's Hugging Face id: {model_source} is a folder on this machine, "
                     "which the Job cannot read.")
    if publish is None:
        notes.append("Set PUBLISH to your bucket: compile.py was run without --publish.")
    tag = source_revision[:12] if source_revision else "TAG"
    run_dir = f"{RUNS_DIR}/{job_name(plan)}"
    notes.append(
        f"`images:` pins the compile image by the digest {JOB_DIR} pins ({job_image_digest()}). If that is not "
        "a build of this checkout, build the Job's image (the Job installs nothing itself): gcloud builds submit "
        f"--config {JOB_DIR}/cloudbuild.yaml --substitutions=_IMAGE={job_image()}:{tag} . and pin the digest "
        f"it prints: python tools/pin_image.py {job_image()}@sha256:<digest> {JOB_DIR} {run_dir}"
    )
    overlay = job_kustomization(
        plan, build_gpus=build.build_gpus if build else plan.tp * plan.pp, model_source=model_source,
        publish=publish or "gs://REPLACE-ME/models", image_digest=job_image_digest(),
    )
    return (
        f"TensorRT-LLM is not installed here ({'; '.join(missing)}). Engines are built on the GPU that "
        f"serves them, in {catalog.triton_image()}. Build this one on GKE with the Job in {JOB_DIR}/, "
        f"from the repository root:\n\n"
        f"mkdir -p {run_dir}\n"
        f"cat > {run_dir}/kustomization.yaml <<'EOF'\n{overlay}EOF\n"
        f"kubectl apply -k {run_dir}\n"
        f"kubectl -n triton-build logs -f job/{job_name(plan)}\n\n"
        + "\n".join(notes)
    )


# ---- running the build ------------------------------------------------------------------------


def missing_tools() -> list[str]:
    missing = []
    if importlib.util.find_spec("tensorrt_llm") is None:
        missing.append("no tensorrt_llm Python module")
    if shutil.which("trtllm-build") is None:
        missing.append("no trtllm-build on PATH")
    return missing


def _local_compute_capability() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                          capture_output=True, text=True, check=False)
    lines = done.stdout.split()
    return lines[0] if done.returncode == 0 and lines else None


def run(
    plan: Plan,
    model_dir: Path,
    work_dir: Path,
    *,
    build: build_memory.BuildNeeds | None,
    model_source: str,
    publish: str | None = None,
    on_command: Callable[[list[str]], None] = lambda command: None,
) -> Path:
    """Build the engine into `work_dir/engine` and return that directory."""
    missing = missing_tools()
    if missing:
        raise EngineUnavailableError(unavailable_message(
            plan, missing, build=build, model_source=model_source, publish=publish,
            source_revision=_git("rev-parse", "HEAD"),
        ))
    local = _local_compute_capability()
    if local != plan.compute_capability:
        raise EngineError(
            f"an engine for {plan.gpu} must be built on compute capability {plan.compute_capability}; "
            f"this machine has {local or 'no NVIDIA GPU'} (engines do not load on another architecture)"
        )
    for command in build_commands(plan, Path(model_dir), Path(work_dir)):
        script = Path(command[1]) if command[0] == PYTHON else None
        if script is not None and not script.is_file():
            raise EngineError(f"{script} not found: run the build in {catalog.triton_image()}")
        on_command(command)
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            raise EngineError(f"{Path(command[1]).name if script else command[0]} failed "
                              f"(exit {done.returncode}): {' '.join(command)}")
    engine = Path(work_dir) / "engine"
    built = json.loads((engine / "config.json").read_text()).get("version")
    wanted = catalog.versions()["tensorrt_llm"]["version"]
    if built != wanted:
        raise EngineError(f"the engine was built by TensorRT-LLM {built}, but {catalog.triton_image()} "
                          f"serves with {wanted}; build in the pinned image")
    return engine


# ---- the runtime ------------------------------------------------------------------------------


def lay_out(repository: Path, plan: Plan, sources: layout.StepSources) -> None:
    engine_dir = run(plan, sources.checkpoint_dir, sources.work_dir, build=sources.build,
                     model_source=sources.job_model, publish=sources.publish_uri,
                     on_command=lambda command: sources.log("> " + " ".join(command)))
    place(repository, plan, engine_dir, sources.checkpoint_dir)


def place(repository: Path, plan: Plan, engine_dir: Path, tokenizer_dir: Path) -> None:
    """The C++ tensorrtllm backend over a built engine, which goes inside the repository (local disk in the pod),
    with the tokenizer info file its guided decoding reads."""
    target = repository / "tensorrt_llm"
    target.mkdir(parents=True)
    (target / "config.pbtxt").write_text(render_config(plan))
    write_tokenizer_info(tokenizer_dir, repository / VERSION_SUBDIR)
    engine_target = repository / ENGINE_SUBDIR
    engine_target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(engine_dir, engine_target,
                    copy_function=lambda src, dst: layout.link_or_copy(Path(src), Path(dst)))


def model_problem(shape: ModelShape, gpu: catalog.Gpu) -> str | None:
    if shape.engine_family is not None:
        return None
    suggestion = "Pass --runtime llmapi"
    needed = PREQUANTIZED_MIN_CC.get(shape.quant_method or "")
    if needed and float(gpu.compute_capability) < needed:  # llmapi would refuse this GPU too
        able = [g.name for g in catalog.gpus().values() if g.compute_capability and
                float(g.compute_capability) >= needed]
        suggestion += (f" with --gpu {' or '.join(able)} ({gpu.name} has no {shape.quant_method} kernels, "
                       "which its weights need)")
    return (
        f"{shape.name} ({shape.architecture}) has no TensorRT engine recipe in TensorRT-LLM "
        f"{catalog.versions()['tensorrt_llm']['version']}; only the PyTorch backend serves it. {suggestion}"
    )


def precision_problem(shape: ModelShape, precision: str) -> str | None:
    if shape.quant_method:
        return (f"{shape.name} ships pre-quantized as {shape.quant_method}, which only the llmapi runtime serves; "
                "pass --runtime llmapi")
    return None


RUNTIME = Runtime(
    name="engine",
    model_problem=model_problem,
    precision_problem=precision_problem,
    uses_tensorrt_llm=True,
    builds_engine=True,
    takes_token_ids=True,
    lay_out=lay_out,
    # Its inputs, at the pinned version (build/tensorrtllm_backend.toml): guided decoding, return_log_probs
    # and num_return_sequences; no top-N alternatives per token.
    capabilities=Capabilities(guide_types=tokenizer_info.GUIDE_TYPES, log_probs=True, return_sequences=True,
                              missing="the C++ TensorRT-LLM backend returns no top-N alternatives per token"),
)
