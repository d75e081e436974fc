"""Size the CPU side of a GPU deployment from numbers: enough ensemble processes that the serving
pipeline's ceiling is at least twice the engine's expected peak output rate, within the pod's CPU.

The engine's peak is build/estimate.py's decode bound at the planned batch (max_batch_size sequences
of estimate.MEAN_SEQUENCE_TOKENS, bandwidth at its stated efficiency). Sizing for twice it leaves room
for an estimate that is low. The pipeline's cost per streamed token was measured (pipeline_costs.toml).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import catalog
import estimate
from plan import Plan

COSTS_FILE = Path(__file__).resolve().parent / "pipeline_costs.toml"
HEADROOM = 2.0  # the pipeline's ceiling over the engine's expected peak


@dataclass(frozen=True)
class Costs:
    ensemble_us: float  # CPU per streamed token in one ensemble process (one event loop, one GIL)
    tritonserver_us: float  # CPU per streamed token in tritonserver itself (gRPC in and out, scheduling)
    engine_threads_per_gpu: float  # cores the TensorRT-LLM executor keeps busy per GPU


@dataclass(frozen=True)
class Sizing:
    engine_peak_tokens_per_s: float
    ensemble_instances: int
    cpu_cores_needed: float  # at HEADROOM x the engine's peak
    cpu_cores_available: float
    ceiling_tokens_per_s: float

    @property
    def keeps_up(self) -> bool:
        return self.ceiling_tokens_per_s >= HEADROOM * self.engine_peak_tokens_per_s

    def to_dict(self) -> dict:
        return {**asdict(self), "keeps_up": self.keeps_up}


def costs() -> Costs:
    raw = tomllib.loads(COSTS_FILE.read_text())["per_token"]
    return Costs(raw["ensemble_us"], raw["tritonserver_us"], raw["engine_threads_per_gpu"])


def engine_peak_tokens_per_s(plan: Plan, gpu: catalog.Gpu) -> float:
    return estimate.estimate(plan, gpu).output_tokens_per_s


def size(plan: Plan, gpu: catalog.Gpu, measured: Costs | None = None) -> Sizing | None:
    """None for the CPU target, where the engine is the bottleneck by far and one process suffices."""
    if gpu.is_cpu:
        return None
    measured = measured or costs()
    peak = engine_peak_tokens_per_s(plan, gpu)
    target = HEADROOM * peak
    available = gpu.pod_cpu * plan.tp * plan.pp - measured.engine_threads_per_gpu * plan.tp * plan.pp
    per_token_s = (measured.ensemble_us + measured.tritonserver_us) / 1e6
    # One ensemble process keeps one core busy at most (its GIL): 1e6 / ensemble_us tokens/s each.
    wanted = max(1, math.ceil(target * measured.ensemble_us / 1e6))
    affordable = max(1, math.floor(available * measured.ensemble_us / 1e6 / per_token_s))
    instances = min(wanted, affordable)
    ceiling = min(instances * 1e6 / measured.ensemble_us, available / per_token_s)
    return Sizing(engine_peak_tokens_per_s=round(peak), ensemble_instances=instances,
                  cpu_cores_needed=round(target * per_token_s, 1), cpu_cores_available=available,
                  ceiling_tokens_per_s=round(ceiling))


def table_rows(sizing: Sizing | None) -> list[tuple[str, str]]:
    """The plan table's rows for the CPU side."""
    if sizing is None:
        return [("ensemble processes", "1 (the CPU engine is the bottleneck)")]
    verdict = "" if sizing.keeps_up else f" (short of {HEADROOM:g}x the engine's peak: the pod's CPU is the limit)"
    return [
        ("engine peak output (estimate)", f"{sizing.engine_peak_tokens_per_s:,.0f} tokens/s"),
        ("ensemble processes", str(sizing.ensemble_instances)),
        ("CPU cores for the pipeline", f"{sizing.cpu_cores_needed:g} needed, {sizing.cpu_cores_available:g} free"),
        ("pipeline ceiling", f"{sizing.ceiling_tokens_per_s:,.0f} tokens/s{verdict}"),
    ]
