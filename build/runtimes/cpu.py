"""The `cpu` runtime: our PyTorch python model (model_repository/tensorrt_llm/cpu) with the C++ TensorRT-LLM
backend's tensors, over a float32 safetensors checkpoint. Runs anywhere: laptops, CI, CPU node pools."""

from __future__ import annotations

from pathlib import Path

import layout
import tokenizer_info  # model_repository/common, on the path from build/layout.py
from plan import Plan

from runtimes import Capabilities, Runtime, write_tokenizer_info

TEMPLATE_DIR = layout.TEMPLATES / "tensorrt_llm" / "cpu"
# The most alternatives per token num_top_log_probs may ask for: OpenAI's top_logprobs maximum.
MAX_TOP_LOG_PROBS = 20
# Tensors of its config.pbtxt that NVIDIA's C++ backend does not have: the top-N alternatives per token
# (the backend returns only the chosen token's log probability). The rest are the backend's.
EXTENSION_INPUTS = ("num_top_log_probs",)
EXTENSION_OUTPUTS = ("top_log_probs", "top_log_prob_ids")


def lay_out(repository: Path, plan: Plan, sources: layout.StepSources) -> None:
    version_dir = layout.python_model(TEMPLATE_DIR, repository / "tensorrt_llm", {
        "max_batch_size": plan.max_batch_size, "max_input_len": plan.max_input_len,
        "max_output_len": plan.max_output_len, "cpu_threads": sources.options.cpu_threads,
        "max_queue_delay_microseconds": sources.options.max_queue_delay_microseconds,
        "max_top_log_probs": MAX_TOP_LOG_PROBS,
    })
    write_tokenizer_info(sources.checkpoint_dir, version_dir)
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
    capabilities=Capabilities(guide_types=tokenizer_info.GUIDE_TYPES, log_probs=True, top_log_probs=MAX_TOP_LOG_PROBS,
                              return_sequences=True),
)
