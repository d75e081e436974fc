"""The control plane in the loop: a fleet (simulator/run.py's Fleet) whose replicas the HPA and the cluster
decide. Every scrape interval each ready replica's metric is recorded on the metric path; every HPA sync
period the HPA reads what the adapter returns for the Deployment's pods, its desired count goes to the
cluster, and the cluster brings pods up (node provisioning, cold start) or takes them away. Between the
fleet's times nothing is looked at, so a pod that turns Ready takes requests from the next scrape or
sync (at most one scrape interval late).

Before the trace starts the cluster has run long enough for the HPA's minReplicas to be Ready at time 0
(warm, WARMUP_STARTS cold starts): the window the report prices starts at 0.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from simulator.cluster import Cluster
from simulator.hpa import Hpa
from simulator.metric_path import MetricPath
from simulator.replica import Replica
from simulator.run import FleetPoint

ENGINE_FACTS = Path(__file__).resolve().parent / "engine_facts.toml"
WARMUP_STARTS = 3  # the warm-up lasts this many cold starts (each a scan, a node and a pod start)


def _trt_llm_waiting(replica: Replica) -> int:
    active, scheduled = replica.executor_counts()
    return active - scheduled


# The per-pod gauge the HPA scales on, from a replica's state: each candidate signal as its deployed series
# would read it (engine_facts.toml [hpa_signal.*]: the series, the formula these follow, and the sources).
# requests_waiting is what every overlay's HPA reads (llm_pod_requests_waiting).
DEFAULT_METRIC = "requests_waiting"
METRICS = {
    "requests_waiting": lambda replica: len(replica.queue) + len(replica.prefilling),
    "trt_llm_waiting": _trt_llm_waiting,
    "trt_llm_active": lambda replica: replica.executor_counts()[0],
    "outstanding": lambda replica: replica.outstanding,
    "not_admitted": lambda replica: len(replica.queue),
}


@cache
def signal_facts() -> dict[str, dict]:
    """engine_facts.toml's [hpa_signal] tables: per candidate, its deployed `series`, `reads`, `fact`, `source`."""
    signals = tomllib.loads(ENGINE_FACTS.read_text())["hpa_signal"]
    if set(signals) != set(METRICS):
        raise ValueError(f"{ENGINE_FACTS} records signals {sorted(signals)}; the simulator reads {sorted(METRICS)}")
    return signals


@dataclass
class Autoscaled:
    hpa: Hpa
    cluster: Cluster
    metric_path: MetricPath
    metric: str = DEFAULT_METRIC
    _next_scrape: float = field(default=0.0, init=False)
    _next_sync: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown HPA metric {self.metric!r}; known: {', '.join(METRICS)}")
        self._read = METRICS[self.metric]
        self._next_scrape = self.metric_path.offset_s
        self._next_sync = self.hpa.spec.sync_period_s

    def start(self) -> list[str]:
        """Warm the cluster up to time 0 with minReplicas pods (at least one) and return them."""
        pods = max(1, self.hpa.spec.min_replicas)
        slowest = max(pool.node_provisioning_s + pool.pod_start_s for pool in self.cluster.pools)
        # long enough for a pod lost to a Spot preemption on the way to be replaced too
        warmup = WARMUP_STARTS * (self.cluster.scan_interval_s + slowest + 1.0)
        self.cluster.now = -math.ceil(warmup)
        self.cluster.set_desired_pods(self.cluster.now, pods)
        self.cluster.advance(0.0)
        ready = self.cluster.ready_pods()
        if len(ready) < pods:
            raise ValueError(f"only {len(ready)} of {pods} pods were Ready before the trace: the node pools have "
                             "too few nodes, or Spot preemptions are so frequent that pods do not stay up")
        return ready

    def next_time(self) -> float:
        return min(self._next_scrape, self._next_sync)

    def control(self, now: float, replicas: dict[str, Replica]) -> tuple[list[str], list[str]]:
        new, gone = self.cluster.advance(now)
        for name in gone:
            self.metric_path.forget(name)
        if now >= self._next_scrape:
            for name, replica in replicas.items():
                if name in gone:
                    continue
                replica.advance(now)
                self.metric_path.record(now, name, float(self._read(replica)))
            self._next_scrape += self.metric_path.scrape_interval_s
        if now >= self._next_sync:
            samples = self.cluster.samples(lambda pod: self.metric_path.read(now, pod))
            desired = self.hpa.sync(now, self.cluster.desired_pods(), samples)
            self.cluster.set_desired_pods(now, desired)
            more_new, more_gone = self.cluster.advance(now)
            new, gone = new + more_new, gone + more_gone
            for name in more_gone:
                self.metric_path.forget(name)
            self._next_sync += self.hpa.spec.sync_period_s
        return [name for name in new if name not in gone], gone

    def point(self, t: float, replicas: int) -> FleetPoint:
        counts = self.cluster.nodes_by_pool()
        pools = {pool.name: pool for pool in self.cluster.pools}
        return FleetPoint(t, replicas, sum(counts.values()),
                          sum(n * pools[name].gpus_per_node for name, n in counts.items()),
                          sum(n * pools[name].price_per_node_hour for name, n in counts.items()))
