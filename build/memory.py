"""What a model takes on a GPU: bytes per weight and per KV entry for each precision, and the arithmetic.

All memory is in GiB (2**30 bytes), the unit `memory_gib` in gpus.toml is given in: the memory the
driver reports per GPU (nvidia-smi memory.total), not the marketed size. The arithmetic, per GPU of
a TP group:

    memory     = memory_gib x 2**30, rounded down to whole bytes
    weights    = (embedding + norms) at 16-bit, replicated on every rank
               + (attention + MLP) at the precision's bytes per weight, split over TP
               + lm_head at 16-bit, split over TP
    headroom   = max(2 GiB, 10% of the GPU): CUDA context, cuBLAS/NCCL workspaces and the
                 activations of one max_num_tokens iteration
    KV budget  = memory - weights - headroom
    KV / token = layers x max(1, kv_heads / TP) x head_dim x 2 (K and V) x KV bytes
    KV tokens  = KV budget / (KV / token), rounded down to whole 32-token blocks

A plan fits when the KV budget holds at least one max_seq_len sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import catalog
from catalog import GIB
from hf_config import ModelShape

HEADROOM_MIN_GIB = 2
HEADROOM_FRACTION = 0.10
TOKENS_PER_BLOCK = 32  # TRT-LLM 1.x paged-KV block size (trtllm-build --tokens_per_block default in 1.x); passed to it


@dataclass(frozen=True)
class Precision:
    linear_bytes: float  # per transformer-block weight (attention and MLP), scales included
    kv_bytes: int
    keeps_accuracy: bool  # the planner may pick it without being asked (see PRECISIONS)
    quantized_mlp_only: bool = False


# int4_awq: 4 bits + one fp16 scale per 128 weights (--awq_block_size 128); nvfp4: 4 bits + one fp8 scale
# per 16; mxfp4 (gpt-oss as published): 4 bits + one 8-bit scale per 32, experts only. FP8 and NVFP4
# engines get an FP8 KV cache (examples/quantization/quantize.py --kv_cache_dtype fp8).
# Accuracy-preserving: the 16- and 32-bit floats, and FP8, which NVIDIA rates "very low" accuracy
# degradation, the only quantization it puts there (TensorRT-Model-Optimizer
# docs/source/guides/_choosing_quant_methods.rst at 7eecd11b: INT8 SmoothQuant "medium", INT4 AWQ "low").
# Weight-only INT8/INT4 and the 4-bit floats are lossy: a per-model accuracy check is the user's call,
# so the planner only takes one where nothing accuracy-preserving fits, and says so. Ordered least lossy
# first.
PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(4, 4, keeps_accuracy=True),
    "bf16": Precision(2, 2, keeps_accuracy=True),
    "fp16": Precision(2, 2, keeps_accuracy=True),
    "fp8": Precision(1, 1, keeps_accuracy=True),
    "int8_wo": Precision(1, 2, keeps_accuracy=False),
    "nvfp4": Precision(0.5 + 1 / 16, 1, keeps_accuracy=False),
    "int4_awq": Precision(0.5 + 2 / 128, 2, keeps_accuracy=False),
    "mxfp4": Precision(0.5 + 1 / 32, 2, keeps_accuracy=False, quantized_mlp_only=True),
}
# Pre-quantized checkpoints are served as shipped, only by the llmapi runtime. MXFP4 MoE kernels are
# documented for Hopper (bf16 activations) and Blackwell only
# (NVIDIA/TensorRT-LLM examples/models/core/gpt_oss/README.md); ModelOpt FP8 needs FP8 tensor cores
# (compute capability 8.9+) and NVFP4 Blackwell (10.0+) (docs/source/reference/support-matrix.md).
PREQUANTIZED_MIN_CC = {"mxfp4": 9.0, "fp8": 8.9, "nvfp4": 10.0}


@dataclass(frozen=True)
class Memory:
    weights_total: int
    weights_per_gpu: int
    headroom: int
    memory: int
    kv_bytes_per_token: int

    @property
    def kv_budget(self) -> int:
        return self.memory - self.weights_per_gpu - self.headroom

    @property
    def kv_tokens(self) -> int:
        if self.kv_budget <= 0:
            return 0
        return self.kv_budget // self.kv_bytes_per_token // TOKENS_PER_BLOCK * TOKENS_PER_BLOCK

    @property
    def kv_share(self) -> float:
        return self.kv_budget / (self.memory - self.headroom)


def kv_dtype(precision: str) -> str:
    return {1: "fp8", 2: "bf16" if precision != "fp16" else "fp16", 4: "fp32"}[PRECISIONS[precision].kv_bytes]


def weight_bytes(shape: ModelShape, precision: str, tp: int = 1) -> tuple[int, int]:
    """(whole model, per GPU of a TP group) weight bytes."""
    p = shape.parameters()
    spec = PRECISIONS[precision]
    wide = 4 if precision == "fp32" else 2
    if spec.quantized_mlp_only:
        split = math.ceil(p.mlp * spec.linear_bytes) + (p.attention + p.lm_head) * wide
    else:
        split = math.ceil(p.linear * spec.linear_bytes) + p.lm_head * wide
    replicated = (p.embedding + p.norms) * wide
    return replicated + split, replicated + math.ceil(split / tp)


def headroom_bytes(memory: int) -> int:
    """What a GPU of `memory` bytes keeps free of weights and KV cache (the headroom rule above)."""
    return max(HEADROOM_MIN_GIB * GIB, int(memory * HEADROOM_FRACTION))


def memory_for(shape: ModelShape, gpu: catalog.Gpu, precision: str, tp: int) -> Memory:
    total, per_gpu = weight_bytes(shape, precision, tp)
    # The cpu target has no GPU: its budget is the Triton pod's memory request.
    memory = int((gpu.pod_memory_gib if gpu.is_cpu else gpu.memory_gib) * GIB)
    kv_heads = max(1, shape.num_kv_heads // tp)  # TP > kv_heads replicates KV heads
    return Memory(
        weights_total=total,
        weights_per_gpu=per_gpu,
        headroom=headroom_bytes(memory),
        memory=memory,
        kv_bytes_per_token=shape.num_layers * kv_heads * shape.head_dim * 2 * PRECISIONS[precision].kv_bytes,
    )
