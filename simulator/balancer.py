"""Which ready replica a new request goes to.

round_robin: each backend in turn, blind to load, as a GKE Ingress (the Application Load Balancer's
default ROUND_ROBIN locality policy over the NEG's endpoints) or a Service spreading connections does.
least_outstanding: the replica with the fewest requests in flight (waiting or running), as an
inference-aware gateway routes; ties go to the first ready replica. The difference between the two on a
trace is what load-aware routing is worth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter

from simulator.replica import Replica

# A balancer picks one replica of the ready list; it may keep state between calls (round robin does).
Balancer = Callable[[Sequence[Replica]], Replica]
NAMES = ("round_robin", "least_outstanding")


def round_robin() -> Balancer:
    turn = 0

    def choose(ready: Sequence[Replica]) -> Replica:
        nonlocal turn
        replica = ready[turn % len(ready)]
        turn += 1
        return replica

    return choose


def least_outstanding() -> Balancer:
    def choose(ready: Sequence[Replica]) -> Replica:
        return min(ready, key=_OUTSTANDING)

    return choose


_OUTSTANDING = attrgetter("outstanding")


def make(name: str) -> Balancer:
    if name == "round_robin":
        return round_robin()
    if name == "least_outstanding":
        return least_outstanding()
    raise ValueError(f"unknown balancer {name!r}; known: {', '.join(NAMES)}")


def needs_current_load(name: str) -> bool:
    """Whether the balancer reads the replicas' load, so the loop must bring them up to each arrival."""
    return name == "least_outstanding"
