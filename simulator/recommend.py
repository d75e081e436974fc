"""The autoscaling that meets an SLO at the lowest cost on a trace: a search over the HPA's target
(AverageValue), minReplicas and maxReplicas and the Spot share (a Spot pool with an on-demand fallback, or
on-demand only), each candidate replayed through simulator/run.py with the HPA, metric path and cluster
of simulator/autoscale.py.

Kept small by what is known without simulating:
  * static provisioning for the peak (the baseline) is the fewest fixed replicas that meet the SLO,
    found by doubling then bisecting; it is what an autoscaled fleet needs at the peak, so maxReplicas is
    tried at that count first, and at MAX_HEADROOM times it only where the least minReplicas allowed
    missed (the HPA reacts a cold start late: a fleet that starts lower may need more pods to catch up);
  * for one Spot share and maxReplicas, a higher minReplicas holds at least as many pods at every moment,
    and a lower target scales up sooner: either meets the SLO if the other candidate does. So for each
    minReplicas only the largest target that meets matters (the cheapest there), and a staircase walk
    finds them all with at most one simulation per minReplicas and per target;
  * a candidate holds at least minReplicas nodes all the time: when that floor's cost is no less than
    the cheapest candidate found so far, it is not simulated (it cannot be cheaper).
Neither is exact (a Spot preemption clock, the stabilization windows), which is why each recommendation
is a simulated run, reported with its numbers, not an extrapolation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import estimate

from simulator import cluster, report
from simulator.autoscale import Autoscaled
from simulator.hpa import Hpa, HpaSpec
from simulator.metric_path import MetricPath
from simulator.replica import Limits, StepModel
from simulator.run import Run, StaticFleet, replay
from simulator.trace import Trace

TARGETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # AverageValue per pod: the coarse grid, doubling
MAX_HEADROOM = 1.5  # maxReplicas tried above the static peak, where the peak count is not enough
TIMELINE_BINS = 120


@dataclass(frozen=True)
class Setup:
    """What every candidate is replayed with."""

    trace: Trace  # within the engine's limits (simulator/run.py clip)
    limits: Limits
    model: StepModel
    gpu: str  # catalog target
    machine_type: str
    gpus_per_node: int
    slo: report.Slo
    attainment: float  # the share of requests that must meet the SLO's targets
    balancer: str
    base: HpaSpec  # behavior, tolerance and sync period: the overlay's
    metric: str
    duration_s: float | None = None
    preemptions_per_node_hour: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.attainment <= 1:
            raise ValueError(f"the attainment to meet is a share between 0 and 1, not {self.attainment}")


@dataclass(frozen=True)
class Candidate:
    target: float
    min_replicas: int
    max_replicas: int
    spot: bool  # a Spot pool first, an on-demand pool as its fallback; else on-demand only

    def text(self) -> str:
        return (f"HPA {self.min_replicas}-{self.max_replicas} at {self.target:g}/pod, "
                f"{'Spot + on-demand fallback' if self.spot else 'on-demand'}")


@dataclass(frozen=True)
class Outcome:
    label: str
    settings: str
    candidate: Candidate | None  # None: static
    meets: bool
    summary: dict  # simulator/report.py summarize

    @property
    def cost_per_day(self) -> float:
        cost = self.summary["cost_per_day_usd"]
        return math.inf if cost is None else cost

    def row(self) -> dict:
        s = self.summary
        p = next(k for k in s["slo"] if k.startswith("ttft_p") and not k.endswith("target"))
        return {"label": self.label, "settings": self.settings, "meets": self.meets,
                "candidate": None if self.candidate is None else dataclasses.asdict(self.candidate),
                "attainment": s["slo"]["attainment"], p: s["slo"][p],
                p.replace("ttft", "itl"): s["slo"][p.replace("ttft", "itl")],
                "replicas_min": s["replicas_min"], "replicas_max": s["replicas_max"],
                "failed_no_replica": s["failed_no_replica"], "gpu_hours": s["gpu_hours"],
                "cost_per_day_usd": s["cost_per_day_usd"]}


@dataclass
class Search:
    """What was tried: simulated outcomes in order, and how many candidates the cost floor skipped."""

    simulated: list[Outcome] = field(default_factory=list)
    skipped_by_cost: int = 0
    runs: dict[Candidate, Outcome] = field(default_factory=dict)  # min == max: the target plays no part

    def run(self, setup: Setup, candidate: Candidate) -> Outcome:
        key = dataclasses.replace(candidate, target=0.0) if candidate.min_replicas == candidate.max_replicas \
            else candidate
        if key not in self.runs:
            self.runs[key] = run_candidate(setup, candidate)
            self.simulated.append(self.runs[key])
        return self.runs[key]


def hourly(setup: Setup, spot: bool) -> float:
    prices = estimate.machine_hourly(setup.machine_type, setup.gpus_per_node)
    if prices is None:
        raise ValueError(f"build/prices.toml records no price for {setup.machine_type}: nothing to minimise")
    return prices[1] if spot else prices[0]


def _summary(setup: Setup, run: Run) -> dict:
    return report.summarize(run, setup.slo, max(1.0, report.duration_s(run) / TIMELINE_BINS))


def _meets(setup: Setup, summary: dict) -> bool:
    return summary["slo"]["attainment"] >= setup.attainment


def run_static(setup: Setup, replicas: int, spot: bool = False) -> Outcome:
    fleet = StaticFleet(replicas, setup.gpus_per_node, hourly(setup, spot))
    run = replay(setup.trace, limits=setup.limits, model=setup.model, balancer=setup.balancer, fleet=fleet,
                 duration_s=setup.duration_s)
    summary = _summary(setup, run)
    held = f"{replicas} {'replica' if replicas == 1 else 'replicas'} fixed, {'Spot' if spot else 'on-demand'}"
    return Outcome("static", held, None,
                   _meets(setup, summary), summary)


def pools(setup: Setup, candidate: Candidate) -> list[cluster.PoolSpec]:
    """As --pools catalog in tools/simulate.py: the target's machine, a Spot pool before the on-demand one."""
    chosen = [cluster.pool_from_catalog(setup.gpu, False, candidate.max_replicas, setup.gpus_per_node)]
    if candidate.spot:
        chosen.insert(0, cluster.pool_from_catalog(setup.gpu, True, candidate.max_replicas, setup.gpus_per_node,
                                                   preemptions_per_node_hour=setup.preemptions_per_node_hour))
    return chosen


def run_candidate(setup: Setup, candidate: Candidate, label: str = "candidate") -> Outcome:
    spec = dataclasses.replace(setup.base, min_replicas=candidate.min_replicas,
                               max_replicas=candidate.max_replicas, target_average_value=candidate.target)
    fleet = Autoscaled(Hpa(spec), cluster.Cluster(pools(setup, candidate), seed=setup.seed),
                       MetricPath.from_manifests(), setup.metric)
    run = replay(setup.trace, limits=setup.limits, model=setup.model, balancer=setup.balancer, fleet=fleet,
                 duration_s=setup.duration_s)
    summary = _summary(setup, run)
    return Outcome(label, candidate.text(), candidate, _meets(setup, summary), summary)


def static_peak(setup: Setup, limit: int) -> Outcome:
    """The fewest fixed on-demand replicas (at most `limit`) that meet the SLO: doubling, then bisection."""
    tried: dict[int, Outcome] = {}

    def at(n: int) -> Outcome:
        if n not in tried:
            tried[n] = run_static(setup, n)
        return tried[n]

    high = 1
    while not at(high).meets:
        if high >= limit:
            raise ValueError(f"no static fleet of up to {limit} replicas meets the SLO on this trace "
                             f"({at(high).summary['slo']['attainment']:.1%} at {high}); raise the limit, "
                             "loosen the SLO or lower the rate")
        high = min(limit, high * 2)
    low = high // 2  # fails (or 0)
    while high - low > 1:
        middle = (low + high) // 2
        if at(middle).meets:
            high = middle
        else:
            low = middle
    return at(high)


def search(setup: Setup, peak: int, *, targets: tuple[float, ...] = TARGETS, spot: tuple[bool, ...] = (True, False),
           min_floor: dict[bool, int] | None = None) -> tuple[Outcome | None, Search]:
    """The cheapest candidate that meets the SLO (None if none does) and what was tried. `peak` is the
    static peak's replica count; min_floor the least minReplicas allowed per Spot share (a Spot overlay
    must keep two: tools/policy/capacity.py)."""
    floors = min_floor or {}
    done = Search()
    best: Outcome | None = None
    maxes = sorted({peak, max(peak, math.ceil(peak * MAX_HEADROOM))})
    for share in sorted(spot, reverse=True):  # Spot first: a cheap success early lets the cost floor skip more
        node_day = hourly(setup, share) * 24  # $/day of one node held all day
        low = max(1, floors.get(share, 1))
        for maximum in sorted({max(m, low) for m in maxes}):
            met = _frontier(setup, done, targets, maximum, share, low, node_day,
                            best.cost_per_day if best else math.inf)
            for outcome in met:
                if best is None or outcome.cost_per_day < best.cost_per_day:
                    best = outcome
            if any(outcome.candidate.min_replicas == low for outcome in met):
                break  # a larger maxReplicas could only add pods to the least minReplicas
    return best, done


def _frontier(setup: Setup, done: Search, targets: tuple[float, ...], maximum: int, share: bool, low: int,
              node_day: float, bound: float) -> list[Outcome]:
    """For each minReplicas from the highest whose floor (that many nodes all day) costs less than `bound`
    down to `low`, the largest target that meets the SLO: a staircase walk. A larger target scales later
    and a lower minReplicas holds fewer pods, so where (m, t) misses, every (m' <= m, t) misses too: the
    walk moves down in minReplicas on a success and down in target on a miss, at most one simulation
    per step of either."""
    high = maximum
    while high >= low and high * node_day >= bound:
        done.skipped_by_cost += 1
        high -= 1
    ordered = sorted(targets, reverse=True)
    met, m, i = [], high, 0
    while m >= low and i < len(ordered):
        outcome = done.run(setup, Candidate(ordered[i], m, maximum, share))
        if outcome.meets:
            met.append(outcome)
            m -= 1
        else:
            i += 1
    return met
