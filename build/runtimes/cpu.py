"""The `cpu` runtime: our PyTorch python model (model_repository/tensorrt_llm/cpu) with the C++ TensorRT-LLM
backend's tensors, over a float32 safetensors checkpoint. Runs anywhere: laptops, CI, CPU node pools."""

from __future__ import annotations

from pathlib import Path

import layout
from plan import Plan

from runtimes import Runtime

TEMPLATE_DIR = layout.TEMPLATES / "tensorrt_llm" / "cpu"


def lay_out(repository: Path, plan: Plan, sources: layout.StepSources) -> None:
    version_dir = layout.python_model(TEMPLATE_DIR, repository / "tensorrt_llm", {
        "max_batch_size": plan.max_batch_size, "max_input_len": plan.max_input_len,
        "max_output_len": plan.max_output_len, "cpu_threads": sources.options.cpu_threads,
        "max_queue_delay_microseconds": sources.options.max_queue_delay_microseconds,
    })
    checkpoint = version_dir / "checkpoint"
    checkpoint.mkdir()
    for path in sorted(sources.checkpoint_dir.iterdir()):
        if path.suffix == ".safetensors" or path.name in ("config.json", "generation_config.json"):
            layout.link_or_copy(path, checkpoint / path.name)


RUNTIME = Runtime(
    name="cpu",
    # The cpu target's own rules (fp32, one process) are the planner's: they follow from the target.
    model_problem=lambda shape, gpu: None,
    precision_problem=lambda shape, precision: None,
    uses_tensorrt_llm=False,
    builds_engine=False,
    takes_token_ids=True,
    lay_out=lay_out,
    # Our python model queues in Triton's scheduler.
    queue_metric="nv_inference_pending_request_count",
)
