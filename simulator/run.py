"""The event loop: a trace's requests, in arrival order, through the balancer onto replicas.

Event-driven, never ticking through idle time: a replica is brought forward only when something needs
its state. Round robin reads no load, so each replica runs its whole share at the end, in one pass;
least-outstanding needs every replica's in-flight count at each arrival, so a replica is brought up to
an arrival only when a request of its may have finished by then (Replica.next_change, a lower bound).
Per-request results are kept as arrays; the summary (simulator/report.py) is computed from them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

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
class Run:
    trace: Trace
    replicas: int
    balancer: str
    first_token_s: np.ndarray  # absolute times
    done_s: np.ndarray
    replica: np.ndarray  # which replica served each request
    fleet: list[tuple[float, int, int]]  # (from time, replicas ready, nodes held), in time order
    trace_end_s: float  # the end of the traced window (at least its last arrival)
    wall_s: float  # how long the simulation took to run

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.trace.arrival_s

    @property
    def e2e_s(self) -> np.ndarray:
        return self.done_s - self.trace.arrival_s

    @property
    def itl_s(self) -> np.ndarray:
        """Each request's mean time between output tokens after the first (nan for one-token answers)."""
        gaps = self.trace.output_tokens - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(gaps > 0, (self.done_s - self.first_token_s) / gaps, math.nan)


def simulate(trace: Trace, *, limits: Limits, model: StepModel, replicas: int, balancer: str,
             duration_s: float | None = None) -> Run:
    """Replay `trace` (within `limits`: see clip) on a fixed number of replicas, one per node, for
    `duration_s` (the trace's last arrival if not given)."""
    if replicas < 1:
        raise ValueError(f"replicas {replicas} must be at least 1")
    too_long = trace.input_tokens + trace.output_tokens > limits.max_seq_len
    if too_long.any():
        raise ValueError(f"{int(too_long.sum())} requests exceed max_seq_len {limits.max_seq_len}; clip the trace")
    started = time.perf_counter()
    requests = Requests(trace.arrival_s.tolist(), trace.input_tokens.tolist(), trace.output_tokens.tolist())
    pool = [Replica(i, limits, model, requests) for i in range(replicas)]
    choose = balancers.make(balancer)
    if balancers.needs_current_load(balancer):
        for request, now in enumerate(requests.arrival):
            for replica in pool:
                if replica.next_change <= now:
                    replica.advance(now)
            choose(pool).add(request)
    else:
        for request in range(len(requests.arrival)):
            choose(pool).add(request)
    for replica in pool:
        replica.advance(INF)
    end = max(duration_s or 0.0, float(trace.arrival_s[-1]))
    return Run(trace, replicas, balancer, np.array(requests.first_token), np.array(requests.done),
               np.array(requests.replica), [(0.0, replicas, replicas)], end, time.perf_counter() - started)
