"""The nodes under the serving pods: node pools in a ComputeClass's order (Spot first, then the fallback),
the cluster autoscaler's scale-up and scale-down, node provisioning and pod start from the catalog's cold-start
budgets, Spot preemption, and what the nodes cost. One serving pod per node, as on the GPU targets.

The autoscaler scans every scan interval (simulator/facts.toml cluster_autoscaler.*): at a scan it asks for one
node per Pending pod that no node is already coming up for, from the first pool that has room and stock; a node
empty of serving pods for the unneeded time is removed (never within the delay after a scale-up). A Spot node is
preempted at a time drawn from a seeded exponential clock; its pod is lost and the Deployment makes a new one,
which waits for a node again. Simplification: a pool whose Spot stock is gone (for stockout_after_preemption_s
after a preemption) is skipped at once, where GKE learns it from a failed node creation.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import catalog
import estimate
import yaml

from simulator import facts
from simulator.hpa import PodSample

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PoolSpec:
    name: str
    spot: bool
    max_nodes: int
    price_per_node_hour: float
    node_provisioning_s: float  # scale-up decision to a node that takes pods (VM, boot, GPU driver)
    pod_start_s: float  # pod bound to a ready node to pod Ready (image pull, model copy, engine load)
    preemptions_per_node_hour: float = facts.value("spot", "preemptions_per_node_hour")
    # the part of pod_start_s the pod spends in phase Pending (image pull, the fetch-model init container)
    pod_pending_s: float = 0.0
    stockout_after_preemption_s: float = 0.0  # after a preemption the pool has no Spot stock for this long
    gpus_per_node: int = 1

    def __post_init__(self) -> None:
        if self.max_nodes < 0 or self.price_per_node_hour < 0 or self.node_provisioning_s < 0 or self.pod_start_s < 0:
            raise ValueError(f"pool {self.name}: max_nodes, price and times must be >= 0")
        if not 0 <= self.pod_pending_s <= self.pod_start_s:
            raise ValueError(f"pool {self.name}: pod_pending_s must be within pod_start_s")
        if self.preemptions_per_node_hour < 0 or (self.preemptions_per_node_hour and not self.spot):
            raise ValueError(f"pool {self.name}: only a Spot pool is preempted, at a rate >= 0")


def pool_from_catalog(gpu_name: str, spot: bool, max_nodes: int, gpus_per_node: int = 1, **extra) -> PoolSpec:
    """A pool of a catalog target's nodes (the machine type with gpus_per_node GPUs, one serving pod each):
    cold-start phases from build/gpus.toml, price from build/prices.toml through build/estimate.py. The phases
    are the catalog's worst-case budgets, not typical times."""
    gpu = catalog.gpu(gpu_name)
    machine = gpu.machine_types.get(gpus_per_node)
    if machine is None:
        raise ValueError(f"{gpu_name} has no machine type with {gpus_per_node} GPUs; "
                         f"it has {sorted(gpu.machine_types)} (build/gpus.toml)")
    return _pool(f"{gpu_name}-{'spot' if spot else 'on-demand'}", gpu, machine, gpus_per_node, spot, max_nodes, extra)


def pools_from_nodepools(gpu_name: str, spot_extra: dict | None = None, folder: Path | None = None) -> list[PoolSpec]:
    """The pools gitops/nodepools gives a target, in its ComputeClass's order (triton-<gpu>: Spot first, the
    fallback after), or its one node pool: Spot, machine type and totalMaxNodeCount from each ContainerNodePool.
    spot_extra (a preemption rate, the stockout after one) applies to the Spot pools."""
    folder = folder or ROOT / "gitops" / "nodepools"
    objects = [o for path in sorted(folder.glob("*.yaml")) for o in yaml.safe_load_all(path.read_text()) if o]
    node_pools = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ContainerNodePool"}
    name = f"triton-{gpu_name}"
    compute_class = next((o for o in objects if o["kind"] == "ComputeClass" and o["metadata"]["name"] == name), None)
    if compute_class is None:
        order = [name]
    else:
        order = []
        for i, priority in enumerate(compute_class["spec"]["priorities"], 1):
            if "nodepools" not in priority:
                kind = "flex-start" if "flexStart" in priority else "auto-created"
                raise ValueError(f"ComputeClass {name} priority {i} is a {kind} {priority.get('machineType')}: "
                                 "build/prices.toml records no price for it; give the pools with pool_from_catalog")
            order += priority["nodepools"]
    if name not in node_pools:
        raise ValueError(f"no ContainerNodePool {name} in {folder}")
    pools = []
    for pool_name in order:
        spec = node_pools[pool_name]["spec"]
        accelerator = spec["nodeConfig"]["guestAccelerator"][0]
        gpu = catalog.gpu_by_accelerator(accelerator["type"])
        spot = bool(spec["nodeConfig"].get("spot"))
        pools.append(_pool(pool_name, gpu, spec["nodeConfig"]["machineType"], int(accelerator["count"]), spot,
                           int(spec["autoscaling"]["totalMaxNodeCount"]), (spot_extra or {}) if spot else {}))
    return pools


def _pool(name: str, gpu: catalog.Gpu, machine: str, gpus_per_node: int, spot: bool, max_nodes: int,
          extra: dict) -> PoolSpec:
    hourly = estimate.machine_hourly(machine, gpus_per_node)
    if hourly is None:
        raise ValueError(f"no price recorded for {machine} (build/prices.toml)")
    cold = gpu.cold_start
    return PoolSpec(name=name, spot=spot, max_nodes=max_nodes,
                    price_per_node_hour=hourly[1] if spot else hourly[0],
                    node_provisioning_s=cold.node_provisioning.seconds,
                    pod_start_s=cold.image_pull.seconds + cold.model_copy.seconds + cold.engine_load.seconds,
                    pod_pending_s=cold.image_pull.seconds + cold.model_copy.seconds,
                    gpus_per_node=gpus_per_node, **extra)


@dataclass
class _Node:
    name: str
    pool: PoolSpec
    created_at: float
    ready_at: float
    pod: str | None = None
    empty_since: float | None = None
    removed_at: float | None = None
    preempt_at: float = math.inf


@dataclass
class _Pod:
    name: str
    created_at: float
    node: _Node | None = None
    bound_at: float = math.inf
    ready: bool = False


@dataclass
class Cluster:
    pools: list[PoolSpec]
    seed: int = 0
    scan_interval_s: float = facts.value("cluster_autoscaler", "scan_interval_s")
    scale_down_unneeded_s: float = facts.value("cluster_autoscaler", "scale_down_unneeded_s")
    scale_down_delay_after_add_s: float = facts.value("cluster_autoscaler", "scale_down_delay_after_add_s")
    now: float = field(default=0.0, init=False)
    _pods: dict[str, _Pod] = field(default_factory=dict, init=False)
    _nodes: list[_Node] = field(default_factory=list, init=False)  # every node ever made, for the bill
    _lost: list[str] = field(default_factory=list, init=False)
    _became_ready: list[str] = field(default_factory=list, init=False)
    _stockout_until: dict[str, float] = field(default_factory=dict, init=False)
    _last_scale_up: float = field(default=-math.inf, init=False)
    _serial: int = field(default=0, init=False)
    # node ready, pod ready and preemption times, as (time, serial, "kind:name")
    _timers: list[tuple[float, int, str]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if not self.pools:
            raise ValueError("a cluster needs at least one node pool")
        self._rng = random.Random(self.seed)

    # --- what the simulation loop calls -------------------------------------------------------------

    def set_desired_pods(self, now: float, n: int) -> None:
        """The Deployment's replicas: new pods start Pending; surplus pods go, the least started first
        (the ReplicaSet's order: unbound, then not ready, then the most recently ready)."""
        self.advance(now)
        if n < 0:
            raise ValueError(f"desired pods {n}: must be >= 0")
        live = list(self._pods.values())
        for _ in range(n - len(live)):
            self._new_pod(now)
        if n < len(live):
            order = sorted(live, key=lambda p: (p.node is not None, self._running(p), p.ready, -p.bound_at))
            for pod in order[: len(live) - n]:
                self._remove_pod(pod, now)

    def advance(self, now: float) -> tuple[list[str], list[str]]:
        """Runs the cluster to `now`: (pods that became Ready, pods lost that had been Ready: preempted or
        scaled in) since the last call."""
        if now < self.now:
            raise ValueError(f"advance to {now}: the cluster is already at {self.now}")
        while True:
            at = min(self._next_scan(), self._timers[0][0] if self._timers else math.inf)
            if at > now:
                break
            self.now = at
            if self._timers and self._timers[0][0] == at:
                _, _, what = heapq.heappop(self._timers)
                self._fire(what, at)
            else:
                self._scan(at)
        self.now = now
        ready, lost = self._became_ready, self._lost
        self._became_ready, self._lost = [], []
        return ready, lost

    def ready_pods(self) -> list[str]:
        return [p.name for p in self._pods.values() if p.ready]

    def desired_pods(self) -> int:
        return len(self._pods)

    def nodes(self) -> int:
        return sum(1 for node in self._nodes if node.removed_at is None)

    def nodes_by_pool(self) -> dict[str, int]:
        counts = dict.fromkeys((pool.name for pool in self.pools), 0)
        for node in self._nodes:
            if node.removed_at is None:
                counts[node.pool.name] += 1
        return counts

    def node_hours(self) -> dict[str, float]:
        """Hours billed per pool up to now: a node from the scale-up that made it to its removal."""
        hours = dict.fromkeys((pool.name for pool in self.pools), 0.0)
        for node in self._nodes:
            until = node.removed_at if node.removed_at is not None else self.now
            hours[node.pool.name] += (until - node.created_at) / 3600
        return hours

    def cost(self) -> float:
        """Node-hours times each pool's price per node-hour."""
        prices = {pool.name: pool.price_per_node_hour for pool in self.pools}
        return sum(hours * prices[name] for name, hours in self.node_hours().items())

    def gpu_hours(self) -> float:
        gpus = {pool.name: pool.gpus_per_node for pool in self.pools}
        return sum(hours * gpus[name] for name, hours in self.node_hours().items())

    def samples(self, read) -> list[PodSample]:
        """The Deployment's pods as the HPA sees them now; read(pod) is the metric path's answer for a pod."""
        out = []
        for pod in self._pods.values():
            running = self._running(pod)
            out.append(PodSample(pod.name, read(pod.name) if running else None, pod.ready, pod.created_at,
                                 phase="Running" if running else "Pending"))
        return out

    # --- inside ---------------------------------------------------------------------------------------

    def _running(self, pod: _Pod) -> bool:
        """Past image pull and init containers: phase Running (Ready or not)."""
        return pod.node is not None and self.now >= pod.bound_at + pod.node.pool.pod_pending_s

    def _next_scan(self) -> float:
        return (math.floor(self.now / self.scan_interval_s) + 1) * self.scan_interval_s

    def _timer(self, at: float, what: str) -> None:
        self._serial += 1
        heapq.heappush(self._timers, (at, self._serial, what))

    def _new_pod(self, now: float) -> None:
        self._serial += 1
        pod = _Pod(f"pod-{self._serial}", now)
        self._pods[pod.name] = pod
        self._bind_free_nodes(now)

    def _remove_pod(self, pod: _Pod, now: float) -> None:
        del self._pods[pod.name]
        if pod.ready:
            self._lost.append(pod.name)
        if pod.node is not None:
            pod.node.pod = None
            pod.node.empty_since = now
            self._bind_free_nodes(now)

    def _fire(self, what: str, at: float) -> None:
        kind, name = what.split(":", 1)
        if kind == "node":
            self._bind_free_nodes(at)
        elif kind == "pod":
            pod = self._pods.get(name)
            started = pod is not None and pod.node is not None and at >= pod.bound_at + pod.node.pool.pod_start_s
            if started and not pod.ready:
                pod.ready = True
                self._became_ready.append(pod.name)
        elif kind == "preempt":
            node = next((n for n in self._nodes if n.name == name and n.removed_at is None), None)
            if node is not None and node.preempt_at == at:
                self._preempt(node, at)

    def _preempt(self, node: _Node, at: float) -> None:
        node.removed_at = at
        if node.pool.stockout_after_preemption_s:
            self._stockout_until[node.pool.name] = at + node.pool.stockout_after_preemption_s
        if node.pod is not None:
            pod = self._pods[node.pod]
            self._remove_pod(pod, at)
            self._new_pod(at)  # the ReplicaSet replaces it; it waits for a node again

    def _bind_free_nodes(self, now: float) -> None:
        """The scheduler: each Pending pod, oldest first, onto an empty node that takes pods (pool order)."""
        free = [n for n in self._nodes if n.removed_at is None and n.pod is None and n.ready_at <= now]
        free.sort(key=lambda n: (self.pools.index(n.pool), n.created_at))
        waiting = sorted((p for p in self._pods.values() if p.node is None), key=lambda p: p.created_at)
        for pod, node in zip(waiting, free, strict=False):
            node.pod, node.empty_since = pod.name, None
            pod.node, pod.bound_at = node, now
            self._timer(now + node.pool.pod_start_s, f"pod:{pod.name}")

    def _scan(self, at: float) -> None:
        """One cluster-autoscaler pass: scale up for Pending pods, else remove nodes unneeded long enough."""
        waiting = sum(1 for p in self._pods.values() if p.node is None)
        coming = sum(1 for n in self._nodes if n.removed_at is None and n.pod is None and n.ready_at > at)
        need = waiting - coming
        if need > 0:
            self._scale_up(at, need)
            return
        if at - self._last_scale_up < self.scale_down_delay_after_add_s:
            return
        for node in self._nodes:
            if (node.removed_at is None and node.pod is None and node.empty_since is not None
                    and at - node.empty_since >= self.scale_down_unneeded_s):
                node.removed_at = at

    def _scale_up(self, at: float, need: int) -> None:
        for pool in self.pools:
            if self._stockout_until.get(pool.name, -math.inf) > at:
                continue
            live = sum(1 for n in self._nodes if n.removed_at is None and n.pool is pool)
            for _ in range(min(need, pool.max_nodes - live)):
                self._serial += 1
                ready_at = at + pool.node_provisioning_s
                node = _Node(f"{pool.name}-{self._serial}", pool, at, ready_at, empty_since=ready_at)
                if pool.spot and pool.preemptions_per_node_hour > 0:
                    node.preempt_at = at + self._rng.expovariate(pool.preemptions_per_node_hour / 3600)
                    self._timer(node.preempt_at, f"preempt:{node.name}")
                self._nodes.append(node)
                self._timer(node.ready_at, f"node:{node.name}")
                self._last_scale_up = at
                need -= 1
            if need == 0:
                return
