"""The Plan: what build/planner.py decided for one model on one target, read by every later step.

The runtime's config, the engine build, the repository layout, pipeline sizing and build.json all take
their numbers from it; none of them plans again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Plan:
    model: str
    architecture: str
    parameters: int
    active_parameters: int  # what one token's matmuls touch: MoE experts count experts_per_token of them
    gpu: str
    accelerator: str
    compute_capability: str
    machine_type: str
    runtime: str
    precision: str
    precision_reason: str
    keeps_accuracy: bool  # False where the plan quantizes below what keeps the checkpoint's accuracy
    kv_cache_dtype: str
    tp: int
    pp: int
    max_batch_size: int
    max_input_len: int
    max_output_len: int
    max_seq_len: int
    max_num_tokens: int
    memory_gib: float
    weights_gib: float  # whole model
    weights_per_gpu_gib: float
    headroom_gib: float
    kv_bytes_per_token: int  # per GPU
    kv_budget_gib: float  # per GPU
    kv_tokens: int
    max_len_sequences: int  # how many max_seq_len sequences the KV budget holds at once
    kv_cache_free_gpu_mem_fraction: float
    num_layers: int
    hidden_size: int
    kv_share: float  # KV budget / (memory - headroom): the share of the decode ceiling a full KV reaches
    tp_reason: str

    def limits(self) -> dict[str, int]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_input_len": self.max_input_len,
            "max_output_len": self.max_output_len,
            "max_seq_len": self.max_seq_len,
            "max_num_tokens": self.max_num_tokens,
        }

    def to_dict(self) -> dict:
        return asdict(self)
