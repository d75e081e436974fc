"""What building a plan's engine holds at its peak, apart from what serving it needs.

ModelOpt calibration (fp8, nvfp4, int8_wo, int4_awq) loads the full-precision (16-bit) model onto
GPUs and runs calibration batches through it; convert_checkpoint (bf16, fp16) holds the 16-bit model
in host memory. Either way the peak is the 16-bit weights, not the serving TP's share of the
quantised ones. Per GPU the same headroom as serving is kept for activations and workspaces; the
host needs the 16-bit weights once (the Job's pod memory is pod_memory_gib per GPU it takes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import catalog
import memory
from hf_config import ModelShape
from plan import Plan

QUANTIZED = ("fp8", "nvfp4", "int8_wo", "int4_awq")
# Calibration holds activations and ModelOpt's quantizer state beside the 16-bit weights. NVIDIA says
# FP8 PTQ of a 70B model needs "a node with at least 4 H100" GPUs, more than 210 GB: 1.5 x its 141 GB of
# 16-bit weights (NVIDIA/TensorRT-LLM examples/models/core/llama/README.md, FP8 post-training quantization).
CALIBRATION_FACTOR = 1.5


@dataclass(frozen=True)
class BuildNeeds:
    step: str  # "quantize.py (ModelOpt calibration on GPU)" or "convert_checkpoint.py (host memory)"
    full_precision_weights_gib: float
    build_gpus: int  # GPUs of this target the build Job needs (0: no machine of the catalog holds it)
    host_memory_gib_needed: float
    host_memory_gib_available: float  # pod_memory_gib x build GPUs
    problem: str  # empty when a catalog machine holds the build

    def to_dict(self) -> dict:
        return asdict(self)


def _usable_bytes(gpu: catalog.Gpu) -> int:
    """One GPU's memory less the headroom serving keeps: what calibration may fill."""
    gpu_bytes = int(gpu.memory_gib * catalog.GIB)
    return gpu_bytes - memory.headroom_bytes(gpu_bytes)


def needs(shape: ModelShape, gpu: catalog.Gpu, plan: Plan) -> BuildNeeds:
    """For a plan whose runtime builds an engine (build/runtimes/engine.py); compile.py asks no other."""
    wide, _ = memory.weight_bytes(shape, "bf16")
    usable = _usable_bytes(gpu)
    if plan.precision in QUANTIZED:
        step = "quantize.py (ModelOpt calibration on GPU)"
        on_gpu = next((n for n in sorted(gpu.machine_types)
                       if n >= plan.tp and n * usable >= CALIBRATION_FACTOR * wide), 0)
    else:
        step = "convert_checkpoint.py (host memory)"
        on_gpu = min(n for n in gpu.machine_types if n >= plan.tp)
    host_available = gpu.pod_memory_gib * on_gpu
    problem = ""
    if on_gpu == 0:
        most = gpu.max_gpus_per_node
        bigger = [g.name for g in catalog.gpus().values() if not g.is_cpu and plan.precision in g.precisions
                  and g.max_gpus_per_node * _usable_bytes(g) >= CALIBRATION_FACTOR * wide]
        calibration = CALIBRATION_FACTOR * wide / catalog.GIB
        problem = (f"calibration needs {CALIBRATION_FACTOR:g} x the 16-bit model ({calibration:.1f} GiB) on GPU; "
                   f"{most} x {gpu.name} give {most * usable / catalog.GIB:.1f} GiB after headroom. "
                   f"Build on a bigger node ({', '.join(bigger) or 'none in the catalog'}), or serve a "
                   f"pre-quantised checkpoint such as NVIDIA's nvidia/<model>-FP8 with --runtime llmapi")
    elif host_available < wide / catalog.GIB:
        problem = (f"the build holds the 16-bit model ({wide / catalog.GIB:.1f} GiB) in host memory; the Job's "
                   f"{on_gpu} GPU(s) come with {host_available} GiB. Take more GPUs' share of the node, or "
                   f"serve a pre-quantised checkpoint (nvidia/<model>-FP8) with --runtime llmapi")
    return BuildNeeds(step, round(wide / catalog.GIB, 2), on_gpu, round(wide / catalog.GIB, 2),
                      float(host_available), problem)


def table_rows(build: BuildNeeds | None) -> list[tuple[str, str]]:
    if build is None:
        return []
    rows = [("build step (peak)", build.step),
            ("build: 16-bit weights held", f"{build.full_precision_weights_gib:.2f} GiB"),
            ("build: GPUs", str(build.build_gpus) if build.build_gpus else "no catalog machine holds it"),
            ("build: host memory", f"{build.host_memory_gib_needed:.1f} GiB of {build.host_memory_gib_available:g}")]
    if build.problem:
        rows.append(("build problem", build.problem))
    return rows
