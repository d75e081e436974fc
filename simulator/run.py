"""The event loop: a trace's requests, in arrival order, through the balancer onto the ready replicas.

Event-driven, never ticking through idle time: a replica is brought forward only when something needs
its state. Round robin reads no load, so a replica runs its share of requests only when the control
plane looks at it, or at the end; least-outstanding needs every replica's in-flight count at each
arrival, so a replica is brought up to an arrival only when a request of its may have finished by then
(Replica.next_change, a lower bound). Which replicas exist is the fleet's: a fixed number (StaticFleet)
or the HPA and the cluster (simulator/autoscale.py), asked at its own times (scrapes, HPA syncs).
A replica that leaves the fleet takes no new request and finishes the ones it holds (the pod's drain).
A request that arrives while no replica is ready fails (the load balancer has no backend).
Per-request results are kept as arrays; simulator/report.py computes the summary from them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from simulator import balancer as balancers
from simulator.replica import INF, Limits, Replica, Requests, StepModel
from simulator.trace import Trace


@dataclass(frozen=True)
class Clipped:
    """A trace within the engine's limits, and how many requests had to be cut to fit."""

    trace: Trace
    inputs_cut: int  # prompts longer than max_input_len (the gateway would refuse them; here cut to it)
    outputs_cut: int  # answers that would pass max_seq_len


def clip(trace: Trace, limits: Limits) -> Clipped:
    inputs = np.minimum(trace.input_tokens, limits.max_input_len)
    outputs = np.minimum(trace.output_tokens, limits.max_seq_len - inputs)
    return Clipped(Trace(trace.name, trace.arrival_s, inputs, outputs),
                   int((inputs < trace.input_tokens).sum()), int((outputs < trace.output_tokens).sum()))


@dataclass(frozen=True)
class FleetPoint:
    """The fleet from time t on: replicas taking requests, nodes held, their GPUs and $/hour."""

    t: float
    replicas: int
    nodes: int
    gpus: int
    usd_per_hour: float | None  # None where a node's price is not recorded


class Fleet(Protocol):
    def start(self) -> list[str]:
        """The replicas ready at time 0."""

    def next_time(self) -> float:
        """When the fleet next wants to look (INF: never)."""

    def control(self, now: float, replicas: dict[str, Replica]) -> tuple[list[str], list[str]]:
        """Look at the ready replicas at `now` (bringing any forward it reads); (new ready, gone)."""

    def point(self, t: float, replicas: int) -> FleetPoint:
        """What is held at `t`."""


@dataclass
class StaticFleet:
    """A fixed number of replicas, one per node: static provisioning."""

    replicas: int
    gpus_per_node: int
    usd_per_node_hour: float | None

    def start(self) -> list[str]:
        return [f"replica-{i}" for i in range(self.replicas)]

    def next_time(self) -> float:
        return INF

    def control(self, now: float, replicas: dict[str, Replica]) -> tuple[list[str], list[str]]:
        return [], []

    def point(self, t: float, replicas: int) -> FleetPoint:
        price = None if self.usd_per_node_hour is None else self.replicas * self.usd_per_node_hour
        return FleetPoint(t, replicas, self.replicas, self.replicas * self.gpus_per_node, price)


@dataclass(frozen=True)
class Run:
    trace: Trace
    balancer: str
    first_token_s: np.ndarray  # absolute times; inf where the request failed (no replica ready)
    done_s: np.ndarray
    replica: np.ndarray  # which replica served each request (-1: none)
    fleet: list[FleetPoint]  # in time order, one per change
    trace_end_s: float  # the end of the traced window (at least its last arrival)
    wall_s: float  # how long the simulation took to run

    @property
    def failed(self) -> np.ndarray:
        return self.replica < 0

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.trace.arrival_s

    @property
    def e2e_s(self) -> np.ndarray:
        return self.done_s - self.trace.arrival_s

    @property
    def itl_s(self) -> np.ndarray:
        """Each request's mean time between output tokens after the first (nan for one-token answers and
        failed requests)."""
        gaps = np.where(self.failed, 0, self.trace.output_tokens - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(gaps > 0, (self.done_s - self.first_token_s) / gaps, math.nan)


def replay(trace: Trace, *, limits: Limits, model: StepModel, balancer: str, fleet: Fleet,
           duration_s: float | None = None) -> Run:
    """Replay `trace` (within `limits`: see clip) on the fleet's replicas, routed by `balancer`, over a
    window from 0 to `duration_s` (at least the last arrival)."""
    too_long = trace.input_tokens + trace.output_tokens > limits.max_seq_len
    if too_long.any():
        raise ValueError(f"{int(too_long.sum())} requests exceed max_seq_len {limits.max_seq_len}; clip the trace")
    started = time.perf_counter()
    end = max(duration_s or 0.0, float(trace.arrival_s[-1]))
    requests = Requests(trace.arrival_s.tolist(), trace.input_tokens.tolist(), trace.output_tokens.tolist())
    ready: dict[str, Replica] = {}
    every: list[Replica] = []  # ever ready, to run each to its end

    def join(names: list[str], now: float) -> None:
        for name in names:
            replica = Replica(len(every), limits, model, requests)
            replica.t_free = now
            ready[name] = replica
            every.append(replica)

    join(fleet.start(), 0.0)
    points = [fleet.point(0.0, len(ready))]
    pool = list(ready.values())

    def control(now: float) -> None:
        nonlocal pool
        new, gone = fleet.control(now, ready)
        if new or gone:
            for name in gone:
                ready.pop(name, None)
            join(new, now)
            pool = list(ready.values())
        point = fleet.point(now, len(pool))
        last = points[-1]
        if (point.replicas, point.nodes, point.usd_per_hour) != (last.replicas, last.nodes, last.usd_per_hour):
            points.append(point)

    choose = balancers.make(balancer)
    track = balancers.needs_current_load(balancer)
    next_control = fleet.next_time()
    for request, now in enumerate(requests.arrival):
        while next_control <= now:
            control(next_control)
            next_control = fleet.next_time()
        if not pool:
            requests.first_token[request] = requests.done[request] = INF
            continue
        if track:
            for replica in pool:
                if replica.next_change <= now:
                    replica.advance(now)
        choose(pool).add(request)
    while next_control < end:  # the fleet goes on to the end of the window (its cost does)
        control(next_control)
        next_control = fleet.next_time()
    for replica in every:
        replica.advance(INF)
    return Run(trace, balancer, np.array(requests.first_token), np.array(requests.done),
               np.array(requests.replica), points, end, time.perf_counter() - started)
