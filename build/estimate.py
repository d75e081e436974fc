"""What a plan should deliver, estimated from catalog facts: decode speed, time to first token, cost.

An estimate, not a measurement. Two bounds, each scaled by a stated efficiency:

    decode step   = bytes read per step / (HBM bandwidth x BANDWIDTH_EFFICIENCY)
                    bytes read = this GPU's weights + KV of every running sequence (batch x KV length
                    x KV bytes per token per GPU); all TP ranks read their shares at once
                  + with TP > 1, the all-reduces: 2 per layer of batch x hidden x 2 bytes, ring, over one
                    direction of the interconnect x BANDWIDTH_EFFICIENCY, not overlapped
                    or, if longer, the step's matmuls: 2 x parameters x batch FLOPs (as prefill, below)
                  + with TP > 1, ALLREDUCE_LATENCY_S per all-reduce, whatever the batch
    output tok/s  = batch / decode step (per replica); per GPU = that / TP
    prefill       = 2 x active parameters x input tokens / (TP x dense TFLOPS x COMPUTE_EFFICIENCY)
                    at the precision's tensor-core rate (fp8, fp4; weight-only int8/int4 and 16-bit run bf16)
    cost / 1M out = machine $/hour / (replicas per machine x output tokens/s x 3600) x 1e6

A workload of fixed input/output lengths (NVIDIA's trtllm-bench runs) adds prefill to decode: a batch
of B requests takes OSL decode steps plus B prefills of ISL tokens, so output tokens/s =
B x OSL / (OSL x step + B x prefill). Efficiencies are fitted by eye to NVIDIA's published
throughput (published_throughput.toml, tests/test_estimate.py keeps every case within 2x), not measured.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import catalog
from catalog import GIB
from plan import Plan

PRICES_FILE = Path(__file__).resolve().parent / "prices.toml"
# Decode kernels read weights and KV at well under datasheet bandwidth (launch gaps, attention at short
# lengths, sampling); 0.6 puts the estimates within 2x of NVIDIA's measurements (tests/test_estimate.py).
BANDWIDTH_EFFICIENCY = 0.6
# Prefill GEMMs reach about half the dense tensor rate at serving batch shapes.
COMPUTE_EFFICIENCY = 0.5
# The KV length of a running sequence, on average: a typical chat turn. Shorter sequences make the
# engine faster (less KV per step) and the CPU side busier; build/pipeline.py sizes for it too.
MEAN_SEQUENCE_TOKENS = 1024
# One small all-reduce's latency on NVLink (NCCL's small-message floor is of this order); a TP group
# pays it twice per layer per step.
ALLREDUCE_LATENCY_S = 20e-6
# The input length time to first token is quoted for.
TTFT_INPUT_TOKENS = 1024
# The latency bound: no plan makes a user wait longer than this per output token (10 tokens/s, about
# reading speed) at its planned batch.
MAX_TIME_PER_OUTPUT_TOKEN_S = 0.100


def compute_kind(precision: str) -> str:
    """Which tensor-core rate a precision's matmuls run at."""
    return {"fp8": "fp8", "nvfp4": "fp4"}.get(precision, "bf16")


def _hbm(gpu: catalog.Gpu) -> float:
    return gpu.hbm_bandwidth_gb_per_s * 1e9 * BANDWIDTH_EFFICIENCY


def allreduce_latency_s(num_layers: int, tp: int) -> float:
    """The fixed cost of a step's all-reduces, whatever the batch: two per layer."""
    return 0.0 if tp == 1 else num_layers * 2 * ALLREDUCE_LATENCY_S


def allreduce_bytes(num_layers: int, hidden_size: int, tp: int) -> float:
    """What one sequence adds to a decode step's all-reduces, per GPU: two per layer (attention and
    MLP outputs) of one 16-bit hidden vector, 2 (TP - 1) / TP of it sent by each GPU (ring)."""
    return 0.0 if tp == 1 else num_layers * 2 * hidden_size * 2 * 2 * (tp - 1) / tp


def sequence_seconds(gpu: catalog.Gpu, kv_bytes_per_token: int, kv_len: float, allreduce: float) -> float:
    """What one running sequence adds to a decode step: its KV read and its share of the all-reduces
    over one direction of the GPU's interconnect, not overlapped (conservative)."""
    link = gpu.interconnect_gb_per_s / 2 * 1e9 * BANDWIDTH_EFFICIENCY
    return kv_len * kv_bytes_per_token / _hbm(gpu) + (allreduce / link if allreduce else 0.0)


def step_seconds(gpu: catalog.Gpu, weights_per_gpu: float, per_sequence_s: float, batch: int,
                 compute_per_sequence_s: float, overhead_s: float) -> float:
    """One decode step: this GPU's weights read once plus every running sequence's share, or, at
    large batches, the step's matmuls (one token per sequence), whichever is longer; plus the
    all-reduces' fixed latency."""
    return overhead_s + max(weights_per_gpu / _hbm(gpu) + batch * per_sequence_s, batch * compute_per_sequence_s)


def prefill_seconds(gpu: catalog.Gpu, parameters: int, precision: str, tp: int, tokens: int) -> float:
    flops = gpu.dense_tflops[compute_kind(precision)] * 1e12 * COMPUTE_EFFICIENCY * tp
    return 2 * parameters * tokens / flops


def batch_for_latency(gpu: catalog.Gpu, weights_per_gpu: float, per_sequence_s: float,
                      compute_per_sequence_s: float, overhead_s: float) -> int:
    """The largest batch whose decode step stays within MAX_TIME_PER_OUTPUT_TOKEN_S (0 if none)."""
    limit = MAX_TIME_PER_OUTPUT_TOKEN_S - overhead_s
    by_bandwidth = (limit - weights_per_gpu / _hbm(gpu)) // per_sequence_s
    return max(0, int(min(by_bandwidth, limit // compute_per_sequence_s)))


def _per_sequence(plan: Plan, gpu: catalog.Gpu, kv_len: float) -> float:
    return sequence_seconds(gpu, plan.kv_bytes_per_token, kv_len,
                            allreduce_bytes(plan.num_layers, plan.hidden_size, plan.tp))


def workload_tokens_per_s(plan: Plan, gpu: catalog.Gpu, input_tokens: int, output_tokens: int) -> float:
    """Output tokens/s of one replica serving requests of exactly these lengths, as many at once as
    max_batch_size and the KV cache allow (each reserves its whole length: guaranteed_no_evict)."""
    batch = max(1, min(plan.max_batch_size, plan.kv_tokens // (input_tokens + output_tokens)))
    prefill = prefill_seconds(gpu, plan.active_parameters, plan.precision, plan.tp, input_tokens)
    step = step_seconds(gpu, plan.weights_per_gpu_gib * GIB, _per_sequence(plan, gpu, input_tokens + output_tokens / 2),
                        batch, prefill / input_tokens, allreduce_latency_s(plan.num_layers, plan.tp))
    return batch * output_tokens / (output_tokens * step + batch * prefill)


@dataclass(frozen=True)
class Cost:
    machine_type: str
    replicas_per_machine: int
    on_demand_per_hour: float
    spot_per_hour: float
    on_demand_per_million_tokens: float
    spot_per_million_tokens: float


@dataclass(frozen=True)
class Estimate:
    batch: int
    mean_sequence_tokens: int
    decode_step_ms: float
    output_tokens_per_s: float  # one replica (TP GPUs)
    output_tokens_per_s_per_gpu: float
    ttft_input_tokens: int
    ttft_ms: float  # prefill of one request alone, no queueing
    kv_tokens: int
    cost: Cost | None  # None where prices.toml has no price for the machine family
    prices: str  # region, date and source of the prices

    def to_dict(self) -> dict:
        return asdict(self)


@cache
def prices() -> dict:
    return tomllib.loads(PRICES_FILE.read_text())


def _family(machine_type: str) -> str:
    return machine_type.rsplit("-", 1)[0]


def machine_hourly(machine_type: str, gpus: int) -> tuple[float, float] | None:
    """(on-demand, Spot) $/h of one machine: its own entry, else its family's price per GPU."""
    machine = prices().get("machines", {}).get(machine_type)
    if machine is not None:
        return machine["on_demand_hour"], machine["spot_hour"]
    family = prices()["families"].get(_family(machine_type))
    if family is None:
        return None
    return family["on_demand_per_gpu_hour"] * gpus, family["spot_per_gpu_hour"] * gpus


def cost(plan: Plan, gpu: catalog.Gpu, tokens_per_s: float) -> Cost | None:
    gpus = next(n for n, machine in gpu.machine_types.items() if machine == plan.machine_type)
    hourly = machine_hourly(plan.machine_type, gpus)
    if hourly is None or tokens_per_s <= 0:
        return None
    replicas = gpus // plan.tp
    per_million_s = 1e6 / (replicas * tokens_per_s)
    on_demand, spot = hourly
    return Cost(plan.machine_type, replicas, round(on_demand, 2), round(spot, 2),
                round(on_demand * per_million_s / 3600, 3), round(spot * per_million_s / 3600, 3))


def estimate(plan: Plan, gpu: catalog.Gpu) -> Estimate | None:
    """The plan's estimate at its planned batch; None for the cpu target (no catalog bandwidth)."""
    if gpu.is_cpu:
        return None
    kv_len = min(MEAN_SEQUENCE_TOKENS, plan.max_seq_len)
    step = step_seconds(gpu, plan.weights_per_gpu_gib * GIB, _per_sequence(plan, gpu, kv_len), plan.max_batch_size,
                        prefill_seconds(gpu, plan.active_parameters, plan.precision, plan.tp, 1),
                        allreduce_latency_s(plan.num_layers, plan.tp))
    rate = plan.max_batch_size / step
    ttft_tokens = min(TTFT_INPUT_TOKENS, plan.max_input_len)
    p = prices()
    return Estimate(
        batch=plan.max_batch_size,
        mean_sequence_tokens=kv_len,
        decode_step_ms=round(step * 1e3, 2),
        output_tokens_per_s=round(rate),
        output_tokens_per_s_per_gpu=round(rate / plan.tp),
        ttft_input_tokens=ttft_tokens,
        ttft_ms=round(prefill_seconds(gpu, plan.active_parameters, plan.precision, plan.tp, ttft_tokens) * 1e3, 1),
        kv_tokens=plan.kv_tokens,
        cost=cost(plan, gpu, rate),
        prices=f"{p['region']}, {p['date']}, {p['source']}",
    )


def table_rows(est: Estimate | None) -> list[tuple[str, str]]:
    if est is None:
        return []
    rows = [
        ("estimate (not a measurement)", f"batch {est.batch} x {est.mean_sequence_tokens} tokens"),
        ("decode step", f"{est.decode_step_ms:g} ms"),
        ("output tokens/s per replica", f"{est.output_tokens_per_s:,.0f}"),
        ("output tokens/s per GPU", f"{est.output_tokens_per_s_per_gpu:,.0f}"),
        (f"time to first token ({est.ttft_input_tokens} in)", f"{est.ttft_ms:g} ms"),
    ]
    if est.cost is None:
        rows.append(("cost per 1M output tokens", "no price recorded (build/prices.toml)"))
    else:
        c = est.cost
        rows += [
            (f"{c.machine_type} $/hour", f"{c.on_demand_per_hour:.2f} (Spot {c.spot_per_hour:.2f})"),
            ("$ per 1M output tokens", f"{c.on_demand_per_million_tokens:.3f} (Spot {c.spot_per_million_tokens:.3f})"),
        ]
    return rows
