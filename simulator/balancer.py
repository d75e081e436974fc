"""Which ready replica a new request goes to.

round_robin: each backend in turn, blind to load: a backend service's default locality policy, taken as
the GKE Ingress's spread over its endpoints (engine_facts.toml [load_balancer], with its caveat).
least_outstanding: the replica with the fewest requests in flight (waiting or running), as an
inference-aware gateway routes; ties go to the first ready replica. The difference between the two on a
trace is what load-aware routing is worth.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path

from simulator.replica import Replica

# A balancer picks one replica of the ready list; it may keep state between calls (round robin does).
Balancer = Callable[[Sequence[Replica]], Replica]
NAMES = ("round_robin", "least_outstanding")
FACTS = Path(__file__).resolve().parent / "engine_facts.toml"


def gke_ingress_default() -> str:
    """The balancer a GKE Ingress is: its backend service's default locality policy (engine_facts.toml)."""
    return tomllib.loads(FACTS.read_text())["load_balancer"]["locality_lb_policy_default"].lower()


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
