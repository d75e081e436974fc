"""What a run means to a user: latency percentiles, SLO attainment, replicas and nodes over time, GPU-hours
and cost, and a PNG plot of load, replicas and latency over time."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.run import Run

PERCENTILES = (50, 90, 99)
FAILED = 1e300  # stands for a failed request's infinite latency where percentiles interpolate


@dataclass(frozen=True)
class Slo:
    """Met when the `percentile`th time to first token and inter-token latency are within these."""

    ttft_s: float
    itl_s: float
    percentile: float = 90.0

    def __post_init__(self) -> None:
        if not (self.ttft_s > 0 and self.itl_s > 0 and 0 < self.percentile < 100):
            raise ValueError(f"an SLO needs times above 0 and a percentile between 0 and 100, not {self}")


def _ms(values: np.ndarray) -> dict[str, float | None]:
    values = values[np.isfinite(values)]  # failed requests (no replica) are counted apart
    if not len(values):
        return {f"p{p}": None for p in PERCENTILES}
    found = np.percentile(values, PERCENTILES)
    return {f"p{p}": round(float(v) * 1e3, 2) for p, v in zip(PERCENTILES, found, strict=True)}


def attainment(run: Run, slo: Slo) -> float:
    """The share of requests whose first token and mean inter-token gap were both within the SLO."""
    itl = run.itl_s
    ok = (run.ttft_s <= slo.ttft_s) & (np.isnan(itl) | (itl <= slo.itl_s))
    return float(ok.mean())


def duration_s(run: Run) -> float:
    """The window a deployment is paid for: the trace's length (its end, or its last arrival)."""
    return max(run.trace_end_s, float(run.trace.arrival_s[-1]))


def timeline(run: Run, slo: Slo, bin_s: float) -> list[dict]:
    """Per bin of arrival time: load, replicas and nodes at the bin's start, and the SLO percentile of
    time to first token and inter-token latency of the requests that arrived in it."""
    arrival, ttft, itl = run.trace.arrival_s, run.ttft_s, run.itl_s
    starts = np.arange(0.0, duration_s(run), bin_s)
    edges = np.searchsorted(arrival, np.append(starts, math.inf))  # arrivals are sorted: bins are slices
    times = np.array([point.t for point in run.fleet])
    rows = []
    for i, start in enumerate(starts):
        lo, hi = edges[i], edges[i + 1]
        at = max(0, int(np.searchsorted(times, start, side="right")) - 1)
        point = run.fleet[at]
        rows.append({
            "t_s": round(float(start), 3),
            "arrivals_per_s": round((hi - lo) / bin_s, 3),
            "replicas": point.replicas,
            "nodes": point.nodes,
            f"ttft_p{slo.percentile:g}_ms": _bin_ms(ttft[lo:hi], slo.percentile),
            f"itl_p{slo.percentile:g}_ms": _bin_ms(itl[lo:hi], slo.percentile),
        })
    return rows


def _bin_ms(values: np.ndarray, percentile: float) -> float | None:
    """The percentile of these requests, a failed one (inf) counting as slower than any."""
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    found = float(np.percentile(np.minimum(values, FAILED), percentile))
    return round(found * 1e3, 2) if found < FAILED else None


def integrate(run: Run, value) -> float | None:
    """value(point) held over the paid window, in value-hours; None if any value is None."""
    end = duration_s(run)
    points = [p for p in run.fleet if p.t < end]
    total = 0.0
    for point, until in zip(points, [p.t for p in points[1:]] + [end], strict=True):
        v = value(point)
        if v is None:
            return None
        total += v * (until - point.t)
    return total / 3600


def summarize(run: Run, slo: Slo, bin_s: float) -> dict:
    ttft, itl, e2e = _ms(run.ttft_s), _ms(run.itl_s), _ms(run.e2e_s)
    p = f"p{slo.percentile:g}"
    measured = {"ttft": _bin_ms(run.ttft_s, slo.percentile), "itl": _bin_ms(run.itl_s, slo.percentile)}
    hours = integrate(run, lambda point: point.nodes)
    cost = integrate(run, lambda point: point.usd_per_hour)
    window = duration_s(run)
    return {
        "requests": len(run.trace),
        "duration_s": round(window, 3),
        "mean_rate_per_s": round(len(run.trace) / window, 3) if window else None,
        "balancer": run.balancer,
        "failed_no_replica": int(run.failed.sum()),
        "replicas_min": min(point.replicas for point in run.fleet),
        "replicas_max": max(point.replicas for point in run.fleet),
        "nodes_max": max(point.nodes for point in run.fleet),
        "ttft_ms": ttft,
        "itl_ms": itl,
        "e2e_ms": e2e,
        "slo": {
            f"ttft_{p}_ms_target": round(slo.ttft_s * 1e3, 2), f"ttft_{p}_ms": measured["ttft"],
            f"itl_{p}_ms_target": round(slo.itl_s * 1e3, 2), f"itl_{p}_ms": measured["itl"],
            "met": (measured["ttft"] is not None and measured["ttft"] <= slo.ttft_s * 1e3
                    and (measured["itl"] is None or measured["itl"] <= slo.itl_s * 1e3)),
            "attainment": round(attainment(run, slo), 4),
        },
        "node_hours": round(hours, 3),
        "gpu_hours": round(integrate(run, lambda point: point.gpus), 3),
        "cost_usd": None if cost is None else round(cost, 2),
        "cost_per_day_usd": None if cost is None or not window else round(cost * 86400 / window, 2),
        "timeline": timeline(run, slo, bin_s),
        "simulation_wall_s": round(run.wall_s, 2),
    }


def plot(summary: dict, slo: Slo, path: Path, title: str) -> None:
    """Three panels over time: arrivals per second, replicas and nodes, and the SLO percentile of
    latency against its targets."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display here or in CI
    import matplotlib.pyplot as plt

    rows = summary["timeline"]
    p = f"p{slo.percentile:g}"
    t = np.array([r["t_s"] for r in rows]) / 60
    fig, (load, fleet, latency) = plt.subplots(3, 1, sharex=True, figsize=(9, 8))
    load.plot(t, [r["arrivals_per_s"] for r in rows], drawstyle="steps-post")
    load.set_ylabel("requests/s")
    fleet.plot(t, [r["replicas"] for r in rows], drawstyle="steps-post", label="replicas")
    fleet.plot(t, [r["nodes"] for r in rows], drawstyle="steps-post", linestyle="--", label="nodes")
    fleet.set_ylabel("count")
    fleet.set_ylim(bottom=0)
    fleet.legend(loc="upper left")
    for key, target, label in ((f"ttft_{p}_ms", slo.ttft_s, "TTFT"), (f"itl_{p}_ms", slo.itl_s, "ITL")):
        values = [math.nan if r[key] is None else r[key] for r in rows]
        line, = latency.plot(t, values, drawstyle="steps-post", label=f"{label} {p}")
        latency.axhline(target * 1e3, color=line.get_color(), linestyle=":", label=f"{label} SLO")
    latency.set_yscale("log")
    latency.set_ylabel("ms")
    latency.set_xlabel("minutes")
    latency.legend(loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
