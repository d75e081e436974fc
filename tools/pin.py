"""Pin a published build in an overlay: rewrite overlays/<target>/model-pin.yaml, then commit it.

The build's build.json is read from GCS and checked against the overlay before anything is written,
by the same gate tools/validate.py applies (tools/policy/pin_gate.py): its GPU, accelerator and compute
capability must be the overlay's GPU (build/gpus.toml, found by the overlay's directory name or its
current pin), its runtime one that GPU runs, its tp × pp the nvidia.com/gpu the overlay's Deployment
requests (as kustomize renders it), and its Triton image the one the Deployment runs; and its size
(the bytes build.json records) must fit the local disk the overlay gives the copy (the models
emptyDir's sizeLimit and triton's ephemeral-storage request, tools/policy/cold_start.py). Only
model-pin.yaml changes; its comment header is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from google.api_core import exceptions as gexc
from google.cloud import storage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "build"))

import catalog  # noqa: E402
import validate  # noqa: E402
from policy import cold_start, images, pin_gate  # noqa: E402
from publish import BUILD_JSON, PublishError, make_client, parse_gcs_uri  # noqa: E402

PIN_FILE = "model-pin.yaml"
PIN_NAME = "model-pin"
ALWAYS_QUOTED = {"build_id", "accelerator", "compute_capability", "tp", "pp", "size_bytes"}


class PinError(Exception):
    """The pin cannot be made; the message says why and what to do."""


def normalize_uri(uri: str) -> str:
    path = parse_gcs_uri(uri)
    return f"gs://{path.bucket}/{path.prefix}/" if path.prefix else f"gs://{path.bucket}/"


def read_build(uri: str, client: storage.Client) -> dict:
    """build.json of the build at `uri`, which must be that build's content-addressed path."""
    path = parse_gcs_uri(uri)
    location = path.uri(BUILD_JSON)
    try:
        build = json.loads(client.bucket(path.bucket).blob(path.object_name(BUILD_JSON)).download_as_bytes())
    except gexc.NotFound as e:
        raise PinError(
            f"{location} does not exist; publish the build first: python tools/publish.py DIR gs://BUCKET/PREFIX"
        ) from e
    except gexc.Forbidden as e:
        raise PinError(
            f"no permission to read {location} ({e.message}); grant yourself roles/storage.objectViewer on the bucket"
        ) from e
    except json.JSONDecodeError as e:
        raise PinError(f"{location} is not valid JSON ({e}); republish the build") from e
    expected_tail = f"{build['model']['name']}/{build['build_id']}"
    if path.prefix != expected_tail and not path.prefix.endswith(f"/{expected_tail}"):
        raise PinError(
            f"{uri} holds build {build['build_id']} of {build['model']['name']}, whose published path "
            f"ends in {expected_tail}/; pin the URI that tools/publish.py printed"
        )
    return build


def read_pin(overlay: Path) -> tuple[str, dict]:
    """The comment header and the data of the overlay's model-pin.yaml."""
    pin_file = overlay / PIN_FILE
    if not pin_file.is_file():
        raise PinError(
            f"{pin_file} does not exist; an overlay serves a pinned model only if it has one "
            "(copy it from another overlay)"
        )
    text = pin_file.read_text()
    lines = text.splitlines(keepends=True)
    header_end = next(
        (i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")), len(lines)
    )
    document = yaml.safe_load(text) or {}
    if document.get("kind") != "ConfigMap" or document.get("metadata", {}).get("name") != PIN_NAME:
        raise PinError(f"{pin_file} is not a ConfigMap named {PIN_NAME}; restore it from git")
    return _drop_example_note("".join(lines[:header_end])), document.get("data") or {}


def _drop_example_note(header: str) -> str:
    """The header without its stand-in note (pin_gate.EXAMPLE_MARK): its first sentence, which stops being
    true with the first real pin."""
    if not pin_gate.is_stand_in(header):
        return header
    lines = header.splitlines(keepends=True)
    end = next((i for i, line in enumerate(lines) if line.rstrip().endswith(".")), len(lines) - 1)
    return "".join(lines[end + 1 :])


def overlay_gpu(overlay: Path, pinned: dict) -> catalog.Gpu:
    """The overlay's GPU: its directory name if that is a catalog GPU, else the GPU its pin names."""
    if overlay.name in catalog.gpus():
        return catalog.gpu(overlay.name)
    if pinned.get("gpu"):
        try:
            return catalog.gpu(pinned["gpu"])
        except catalog.UnknownGpuError as e:
            raise PinError(f"{overlay / PIN_FILE}: {e}") from e
    raise PinError(
        f"cannot tell which GPU {overlay} serves: {overlay.name!r} is not a GPU in build/gpus.toml "
        f"and {overlay / PIN_FILE} names no gpu"
    )


def overlay_deployment(overlay: Path) -> tuple[int, str, dict]:
    """The nvidia.com/gpu request and the image of the overlay's Triton container (as builds name it), and
    the Deployment, as kustomize renders it."""
    try:
        objects = validate.render(overlay)
    except (validate.RenderError, validate.ToolError) as e:
        raise PinError(f"cannot render {overlay}: {e}; fix it first (python tools/validate.py {overlay})") from e
    for obj in objects:
        if obj.get("kind") == "Deployment" and obj["metadata"].get("name") == "triton":
            containers = obj["spec"]["template"]["spec"].get("containers", [])
            triton = next((c for c in containers if c.get("name") == "triton"), None)
            if triton is not None:
                gpus = triton.get("resources", {}).get("requests", {}).get(pin_gate.GPU_RESOURCE, 0)
                # The image builds record (the nvcr.io tag) for the Artifact Registry copy it runs.
                return int(gpus), images.as_built(triton.get("image", "")), obj
    raise PinError(f"{overlay} renders no Deployment/triton with a container triton; restore it from git")


def disk_problems(overlay: Path, data: dict[str, str], deployment: dict) -> list[str]:
    """The validator's local-disk rule, before the pin is written: a build bigger than the overlay
    gives it would be evicted mid-copy, or land on a node without room."""
    pod = deployment["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c.get("name") == "triton")
    found = cold_start.check_local_disk(data, deployment, pod, triton)
    return [f"{p}; in {overlay / 'gpu.yaml'}, in the same commit as the pin" for p in found]


def _scalar(key: str, value: str) -> str:
    # A build id of digits, a compute capability like 9.0 or a tp of 2 would read back as a number
    # (ConfigMap data must be strings), and the cpu target's accelerator is empty: those keys are
    # always quoted, the rest only where YAML needs it.
    if key in ALWAYS_QUOTED or yaml.safe_load(value) != value or ": " in value or " #" in value:
        return json.dumps(value)
    return value


def render_pin(header: str, data: dict[str, str]) -> str:
    values = "".join(f"  {key}: {_scalar(key, data[key])}\n" for key in pin_gate.PIN_KEYS)
    return (
        f"{header}apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {PIN_NAME}\n  annotations:\n"
        f'    config.kubernetes.io/local-config: "true"\ndata:\n{values}'
    )


def write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
    os.chmod(tmp.name, path.stat().st_mode & 0o777)
    os.replace(tmp.name, path)


def commit_command(overlay: Path, build: dict) -> list[str]:
    message = f"Pin {build['model']['name']} {build['build_id']} for {overlay.name}"
    return ["git", "-C", str(overlay), "commit", "-m", message, "--", PIN_FILE]


def pin(overlay: Path, uri: str, client: storage.Client | None = None) -> tuple[dict, bool]:
    """Check the build at `uri` against the overlay and write the pin; (build.json, whether it changed).

    Without a client, one is made (make_client) once the local checks have passed."""
    uri = normalize_uri(uri)
    header, pinned = read_pin(overlay)
    gpu = overlay_gpu(overlay, pinned)
    gpus, image, deployment = overlay_deployment(overlay)
    build = read_build(uri, client or make_client())
    data = pin_gate.pin_data(uri, build)
    problems = pin_gate.problems(data, str(overlay), gpu, gpus, image) + disk_problems(overlay, data, deployment)
    if problems:
        raise PinError("\n".join(problems))
    text = render_pin(header, data)
    pin_file = overlay / PIN_FILE
    if pin_file.read_text() == text:
        return build, False
    write_atomically(pin_file, text)
    return build, True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pin.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python tools/pin.py --overlay overlays/h100 gs://my-models/triton/Llama-3.1-8B/0123456789abcdef/\n"
            "  python tools/pin.py --overlay overlays/cpu --commit "
            "gs://my-models/triton/SmolLM2-135M-Instruct/0123456789abcdef/\n"
            "\nThen git push: Argo CD rolls the overlay's Triton pods over to the new build."
        ),
    )
    parser.add_argument("--overlay", type=Path, required=True, help="overlay directory, e.g. overlays/h100")
    parser.add_argument("uri", help="the build's URI, as tools/publish.py printed it")
    parser.add_argument("--commit", action="store_true", help="make the git commit instead of printing it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        build, changed = pin(args.overlay, args.uri)
    except (PinError, PublishError) as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 1
    pin_file = args.overlay / PIN_FILE
    if not changed:
        print(f"{pin_file} already pins {normalize_uri(args.uri)}; nothing to commit", file=sys.stderr)
        return 0
    print(f"* pinned {build['model']['name']} {build['build_id']} in {pin_file}", file=sys.stderr)
    command = commit_command(args.overlay, build)
    if not args.commit:
        print(shlex.join(command))
        return 0
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        print(f"error: {shlex.join(command)} failed:", output, sep="\n", file=sys.stderr)
        return 1
    revision = subprocess.run(
        ["git", "-C", str(args.overlay), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    print(revision.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
