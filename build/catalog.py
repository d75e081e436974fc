"""The GPU catalog and the pinned versions, read from gpus.toml and versions.toml beside this file."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
GPUS_FILE = HERE / "gpus.toml"
VERSIONS_FILE = HERE / "versions.toml"
GIB = 2**30  # the unit of memory_gib and pod_memory_gib


class UnknownGpuError(ValueError):
    """A target name that is not in the catalog."""


@dataclass(frozen=True)
class Phase:
    """One phase of a cold start: its budget in seconds, and why it takes that long."""

    seconds: int
    why: str


@dataclass(frozen=True)
class ColdStart:
    """How long a new pod of one target may take, from no node to Ready (gpus.toml cold_start)."""

    node_provisioning: Phase
    image_pull: Phase
    model_copy: Phase
    engine_load: Phase
    startup_margin: float  # [cold_start] startup_margin: the startupProbe's slack over engine_load

    @property
    def phases(self) -> dict[str, Phase]:
        return {
            "node provisioning": self.node_provisioning,
            "image pull": self.image_pull,
            "model copy": self.model_copy,
            "engine load": self.engine_load,
        }

    @property
    def startup_window_s(self) -> int:
        """The least time the startupProbe must allow: engine load and its margin."""
        return math.ceil(self.engine_load.seconds * self.startup_margin)

    @property
    def before_triton_s(self) -> int:
        """Node, image and model copy: what passes before tritonserver (and its probes) starts."""
        return self.node_provisioning.seconds + self.image_pull.seconds + self.model_copy.seconds


@dataclass(frozen=True)
class Gpu:
    name: str
    accelerator: str
    compute_capability: str
    memory_gib: float  # as the driver reports it (nvidia-smi memory.total): what plans budget against
    marketed_memory_gb: int  # the spec-sheet size, for display
    hbm_bandwidth_gb_per_s: float  # datasheet peak, 10^9 bytes/s
    machine_types: dict[int, str]
    pod_cpu: int
    pod_memory_gib: int
    precisions: tuple[str, ...]  # what the SM runs; the planner chooses among them (memory.PRECISIONS)
    runtimes: tuple[str, ...]
    dense_tflops: dict[str, float]  # "bf16", "fp8", "fp4" -> dense tensor TFLOPS per GPU (datasheet); 0 = none
    interconnect_gb_per_s: float  # GPU-to-GPU (NVLink, else PCIe), both directions, 10^9 bytes/s
    cold_start: ColdStart

    @property
    def is_cpu(self) -> bool:
        return self.name == "cpu"

    @property
    def gpus_per_node_options(self) -> tuple[int, ...]:
        return tuple(sorted(self.machine_types))

    @property
    def max_gpus_per_node(self) -> int:
        return max(self.machine_types)


def _cold_start(entry: dict, shared: dict) -> ColdStart:
    phases = {name: Phase(int(p["seconds"]), p["why"]) for name, p in entry.items()}
    return ColdStart(**phases, startup_margin=float(shared["startup_margin"]))


@cache
def copy_mb_per_s() -> float:
    """[cold_start] copy_mb_per_s: the rate model_copy budgets assume (10^6 bytes per second)."""
    return float(tomllib.loads(GPUS_FILE.read_text())["cold_start"]["copy_mb_per_s"])


@cache
def gpus() -> dict[str, Gpu]:
    document = tomllib.loads(GPUS_FILE.read_text())
    raw, shared = document["gpus"], document["cold_start"]
    return {
        name: Gpu(
            name=name,
            accelerator=entry["accelerator"],
            compute_capability=entry["compute_capability"],
            memory_gib=float(entry["memory_gib"]),
            marketed_memory_gb=entry["marketed_memory_gb"],
            hbm_bandwidth_gb_per_s=float(entry["hbm_bandwidth_gb_per_s"]),
            machine_types={int(count): machine for count, machine in entry["machine_types"].items()},
            pod_cpu=entry["pod_cpu"],
            pod_memory_gib=entry["pod_memory_gib"],
            precisions=tuple(entry["precisions"]),
            runtimes=tuple(entry["runtimes"]),
            dense_tflops={kind: float(entry[f"dense_tflops_{kind}"]) for kind in ("bf16", "fp8", "fp4")},
            interconnect_gb_per_s=float(entry["interconnect_gb_per_s"]),
            cold_start=_cold_start(entry["cold_start"], shared),
        )
        for name, entry in raw.items()
    }


def gpu(name: str) -> Gpu:
    catalog = gpus()
    if name not in catalog:
        raise UnknownGpuError(f"unknown GPU target {name!r}; known targets: {', '.join(catalog)}")
    return catalog[name]


def gpu_by_accelerator(label: str) -> Gpu | None:
    return next((g for g in gpus().values() if g.accelerator and g.accelerator == label), None)


@dataclass(frozen=True)
class Machine:
    name: str
    vcpus: int
    memory_gib: float


@cache
def machines() -> dict[str, Machine]:
    """[machines]: the vCPUs and memory of every machine type the targets name."""
    raw = tomllib.loads(GPUS_FILE.read_text())["machines"]
    return {name: Machine(name, int(m["vcpus"]), float(m["memory_gib"])) for name, m in raw.items()}


@cache
def versions() -> dict:
    return tomllib.loads(VERSIONS_FILE.read_text())


def triton_image() -> str:
    return versions()["triton"]["image"]


def triton_image_disk_gb() -> float:
    """What the pinned image takes on a node's boot disk (GB, 10^9): the pulled layers and their unpacked copy."""
    triton = versions()["triton"]
    return float(triton["image_pull_gb"]) * (1 + float(triton["image_unpacked_ratio"]))
