"""The `llmapi` runtime: TensorRT-LLM's PyTorch backend behind NVIDIA's python `llmapi` model.

No engine is built: the repository carries the Hugging Face checkpoint, a `model.yaml` of LLM()
arguments from the plan, and the model that loads NVIDIA's code from the pinned image.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import catalog
import layout
import templating
from hf_config import ModelShape
from plan import Plan

from runtimes import Capabilities, Runtime

MODEL_DIR = layout.TEMPLATES / "tensorrt_llm" / "llmapi"
CONFIG_TEMPLATE = MODEL_DIR / "config.pbtxt"
MODEL_YAML_TEMPLATE = MODEL_DIR / "1" / "model.yaml"
MODEL_PY = MODEL_DIR / "1" / "model.py"

# The Hugging Face checkpoint (weights, config.json, tokenizer) inside a built repository, and
# where Triton's pod has it on local disk.
CHECKPOINT_SUBDIR = "tensorrt_llm/1/checkpoint"
CHECKPOINT_PATH_IN_POD = f"{layout.POD_MODEL_REPOSITORY}/{CHECKPOINT_SUBDIR}"

# plan precision -> LLM(dtype=...); a pre-quantized checkpoint keeps its own quantization and
# the dtype of everything else it ships with.
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "mxfp4": "auto", "fp8": "auto", "nvfp4": "auto"}
# What it serves from an unquantized checkpoint: it loads weights as they are and does not run
# ModelOpt itself.
UNQUANTIZED = ("bf16", "fp16")


def model_yaml_values(plan: Plan) -> dict[str, object]:
    if plan.runtime != "llmapi":
        raise ValueError(f"model.yaml is for the llmapi runtime, not {plan.runtime!r}")
    return {
        "model": CHECKPOINT_PATH_IN_POD,
        "dtype": DTYPES[plan.precision],
        "tensor_parallel_size": plan.tp,
        "pipeline_parallel_size": plan.pp,
        "max_batch_size": plan.max_batch_size,
        "max_num_tokens": plan.max_num_tokens,
        "max_input_len": plan.max_input_len,
        "max_seq_len": plan.max_seq_len,
        "enable_chunked_prefill": True,  # prompts longer than max_num_tokens go in pieces
        "kv_tokens": plan.kv_tokens,
        "free_gpu_memory_fraction": plan.kv_cache_free_gpu_mem_fraction,
        "enable_block_reuse": True,  # shared prompt prefixes (system prompts) reuse KV blocks
        "cancellation_check_period_ms": 100,
    }


def render_model_yaml(plan: Plan) -> str:
    return templating.fill(MODEL_YAML_TEMPLATE.read_text(), model_yaml_values(plan),
                           source=str(MODEL_YAML_TEMPLATE.relative_to(layout.ROOT)))


def render_config(plan: Plan) -> str:
    if plan.runtime != "llmapi":
        raise ValueError(f"this config.pbtxt is for the llmapi runtime, not {plan.runtime!r}")
    return templating.fill(CONFIG_TEMPLATE.read_text(), {}, source=str(CONFIG_TEMPLATE.relative_to(layout.ROOT)))


def lay_out(repository: Path, plan: Plan, sources: layout.StepSources) -> None:
    """NVIDIA's llmapi model (wrapped for text deltas), its model.yaml, and the checkpoint it loads."""
    version_dir = repository / "tensorrt_llm" / "1"
    version_dir.mkdir(parents=True)
    (repository / "tensorrt_llm" / "config.pbtxt").write_text(render_config(plan))
    (version_dir / "model.yaml").write_text(render_model_yaml(plan))
    shutil.copy2(MODEL_PY, version_dir / "model.py")
    for path in sorted(sources.checkpoint_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            layout.link_or_copy(path, repository / CHECKPOINT_SUBDIR / path.name)


def precision_problem(shape: ModelShape, precision: str) -> str | None:
    if shape.quant_method or precision in UNQUANTIZED:
        return None  # a pre-quantized checkpoint is served as shipped
    return (
        f"the llmapi runtime serves the checkpoint's own weights and does not quantize; "
        f"{shape.name} is unquantized, so it runs at {' or '.join(UNQUANTIZED)} "
        f"(use --runtime engine for {precision})"
    )


RUNTIME = Runtime(
    name="llmapi",
    model_problem=lambda shape, gpu: None,
    precision_problem=precision_problem,
    uses_tensorrt_llm=True,
    builds_engine=False,
    takes_token_ids=False,
    lay_out=lay_out,
    # tools/policy/upstream_facts.toml, tensorrt_llm.llmapi_outputs: what NVIDIA's model reads and returns.
    capabilities=Capabilities(missing=(
        f"NVIDIA's llmapi model in TensorRT-LLM {catalog.versions()['tensorrt_llm']['version']} takes no "
        "guided-decoding input and no number of sequences, "
        "and returns one cumulative log probability, not one per token"
    )),
)
