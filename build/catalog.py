"""The GPU catalog and the pinned versions, read from gpus.toml and versions.toml beside this file."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
GPUS_FILE = HERE / "gpus.toml"
VERSIONS_FILE = HERE / "versions.toml"


class UnknownGpuError(ValueError):
    """A target name that is not in the catalog."""


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
    precisions: tuple[str, ...]
    default_precision: str
    runtimes: tuple[str, ...]
    dense_tflops: dict[str, float]  # "bf16", "fp8", "fp4" -> dense tensor TFLOPS per GPU (datasheet); 0 = none
    interconnect_gb_per_s: float  # GPU-to-GPU (NVLink, else PCIe), both directions, 10^9 bytes/s

    @property
    def is_cpu(self) -> bool:
        return self.name == "cpu"

    @property
    def gpus_per_node_options(self) -> tuple[int, ...]:
        return tuple(sorted(self.machine_types))

    @property
    def max_gpus_per_node(self) -> int:
        return max(self.machine_types)


@cache
def gpus() -> dict[str, Gpu]:
    raw = tomllib.loads(GPUS_FILE.read_text())["gpus"]
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
            default_precision=entry["default_precision"],
            runtimes=tuple(entry["runtimes"]),
            dense_tflops={kind: float(entry[f"dense_tflops_{kind}"]) for kind in ("bf16", "fp8", "fp4")},
            interconnect_gb_per_s=float(entry["interconnect_gb_per_s"]),
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


@cache
def versions() -> dict:
    return tomllib.loads(VERSIONS_FILE.read_text())


def triton_image() -> str:
    return versions()["triton"]["image"]
