"""The compatibility gate: can a build run where an overlay runs it? One implementation for the two
places that ask, tools/pin.py (before it writes a pin) and tools/validate.py (on every pin in git).

A pin (overlays/<target>/model-pin.yaml, ConfigMap `model-pin`) holds PIN_KEYS, all strings, copied
from the build's build.json by pin_data.
"""

from __future__ import annotations

import catalog

GPU_RESOURCE = "nvidia.com/gpu"
# A pin whose header's first sentence starts with this stands in for a build (the repository's
# examples): tools/pin.py drops the sentence with the first real pin, and the validator holds an
# overlay with a real pin to a real gateway image (policy/gateway.py check_image).
EXAMPLE_MARK = "# EXAMPLE PIN"
# The order a pin's keys are written in. The model-pin component copies uri, bucket, prefix and
# build_id into the Deployment (the Cloud Storage FUSE volume mounts bucket and prefix separately);
# size_bytes is what tools/policy/cold_start.py sizes the pod's local disk by.
PIN_KEYS = (
    "uri", "bucket", "prefix", "build_id", "gpu", "accelerator", "compute_capability", "runtime", "triton_image",
    "tp", "pp", "size_bytes",
)


def split_uri(uri: str) -> tuple[str, str]:
    """gs://bucket/some/prefix/ -> ("bucket", "some/prefix")."""
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    return bucket, prefix.strip("/")


def repository_bytes(build: dict) -> int:
    """The model repository's size: build.json records every file's size (build.json itself aside)."""
    return sum(int(entry["size"]) for entry in build["files"].values())


def pin_data(uri: str, build: dict) -> dict[str, str]:
    """What a pin records of the build at `uri` (ConfigMap data: strings only)."""
    target = build["target"]
    bucket, prefix = split_uri(uri)
    return {
        "uri": uri,
        "bucket": bucket,
        "prefix": prefix,
        "build_id": build["build_id"],
        "gpu": target["gpu"],
        "accelerator": target["accelerator"],
        "compute_capability": target["compute_capability"],
        "runtime": build["runtime"],
        "triton_image": build["versions"]["triton_image"],
        "tp": str(build["tp"]),
        "pp": str(build["pp"]),
        "size_bytes": str(repository_bytes(build)),
    }


def _parallelism(pin: dict[str, str]) -> tuple[int, int] | None:
    tp, pp = pin["tp"], pin["pp"]
    if tp.isdigit() and pp.isdigit() and int(tp) > 0 and int(pp) > 0:
        return int(tp), int(pp)
    return None


def _gpus_problem(pin: dict[str, str], where: str, gpu: catalog.Gpu, gpus: int) -> list[str]:
    build = f"build {pin['build_id']}"
    parallelism = _parallelism(pin)
    if parallelism is None:
        return [f"{build} has tp {pin['tp']!r} and pp {pin['pp']!r}, not positive whole numbers; republish and pin it"]
    tp, pp = parallelism
    if not gpu.accelerator:
        if (tp, pp, gpus) == (1, 1, 0):
            return []
        return [
            f"{build} has tp {tp} and pp {pp} but {where} runs on cpu with {gpus} {GPU_RESOURCE}; a cpu build "
            "has tp 1 and pp 1 and its pod requests no GPU"
        ]
    needed = tp * pp
    if needed == gpus:
        return []
    rebuild = f", or build with: python build/compile.py --gpu {gpu.name} --tp {gpus}" if gpus else ""
    return [
        f"{build} runs on tp {tp} × pp {pp} = {needed} GPU{'s' if needed > 1 else ''} but {where} requests "
        f"{gpus} {GPU_RESOURCE}; set {GPU_RESOURCE} (and cpu and memory, per GPU in build/gpus.toml) to {needed} "
        f"in the overlay's gpu.yaml{rebuild}"
    ]


def problems(pin: dict[str, str], where: str, gpu: catalog.Gpu, gpus: int, image: str) -> list[str]:
    """Why the pinned build cannot run where `where` (an overlay) runs `gpu` × `gpus` with `image`; [] if it can."""
    build = f"build {pin['build_id']}"
    found = []
    theirs = (pin["gpu"], pin["accelerator"], pin["compute_capability"])
    if theirs != (gpu.name, gpu.accelerator, gpu.compute_capability):
        found.append(
            f"{build} is for gpu {pin['gpu']!r} (accelerator {pin['accelerator']!r}, compute capability "
            f"{pin['compute_capability']!r}) but {where} runs on gpu {gpu.name!r} (accelerator {gpu.accelerator!r}, "
            f"compute capability {gpu.compute_capability!r}; build/gpus.toml); "
            f"build it with: python build/compile.py --gpu {gpu.name}"
        )
    if pin["runtime"] not in gpu.runtimes:
        found.append(
            f"{build} has runtime {pin['runtime']!r} but {where} ({gpu.name}) runs "
            f"{' or '.join(map(repr, gpu.runtimes))}; build it with: python build/compile.py --gpu {gpu.name}"
        )
    found += _gpus_problem(pin, where, gpu, gpus)
    if pin["triton_image"] != image:
        found.append(
            f"{build} was made for image {pin['triton_image']} but {where} deploys {image}; "
            "rebuild it with the versions pinned in build/versions.toml, or change both together"
        )
    return found


def is_stand_in(pin_text: str) -> bool:
    """Whether a model-pin.yaml's text is a stand-in pin (its header starts with EXAMPLE_MARK)."""
    return pin_text.startswith(EXAMPLE_MARK)
