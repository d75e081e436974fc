"""tools/pin.py and the whole promotion (publish, pin, commit, push, render) against the real GCS
emulator, real git repositories and the real `kubectl kustomize`."""

from __future__ import annotations

import difflib
import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.cloud import storage
from pin import main as pin_main
from publish import make_client, publish
from test_publish import MODEL, bucket, emulator_url, write_build  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"


def run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{shlex.join(map(str, command))} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture
def git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits made by the tests: no user or system git config (hooks, signing) gets in the way."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Promotion Test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "promotion@example.com")


def published(
    tmp_path: Path, bucket: storage.Bucket, gpu: str = "cpu", **changes: str | int  # noqa: F811
) -> tuple[str, dict]:
    """Publish a small build for `gpu` to the emulator; its URI and build.json."""
    repo_dir = tmp_path / f"build-{gpu}"
    repo_dir.mkdir()
    build = write_build(repo_dir, gpu=gpu, **changes)
    return publish(repo_dir, f"gs://{bucket.name}/builds", make_client()), build


def overlay_copy(tmp_path: Path, target: str) -> Path:
    """overlays/<target> of this checkout in a scratch copy of overlays/ and gitops/ (pin.py renders it)."""
    for folder in ("gitops", "overlays"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path / "overlays" / target


def header(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#")]


def test_pin_rewrites_the_pin_keeps_its_header_and_prints_the_commit(
    tmp_path: Path, bucket: storage.Bucket, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    uri, build = published(tmp_path, bucket)
    overlay = overlay_copy(tmp_path, "cpu")
    before = (overlay / "model-pin.yaml").read_text()

    assert pin_main(["--overlay", str(overlay), uri]) == 0

    out, err = capsys.readouterr()
    message = f"Pin {MODEL} {build['build_id']} for cpu"
    assert out == f"git -C {overlay} commit -m '{message}' -- model-pin.yaml\n"
    assert err == f"* pinned {MODEL} {build['build_id']} in {overlay}/model-pin.yaml\n"
    after = (overlay / "model-pin.yaml").read_text()
    # The checked-in cpu pin is an example: its first sentence goes, the rest of the header stays.
    assert header(before)[0].startswith("# EXAMPLE PIN: ")
    assert header(after) == header(before)[2:]
    assert yaml.safe_load(after) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "model-pin", "annotations": {"config.kubernetes.io/local-config": "true"}},
        "data": {
            "uri": f"gs://{bucket.name}/builds/{MODEL}/{build['build_id']}/",
            "bucket": bucket.name,
            "prefix": f"builds/{MODEL}/{build['build_id']}",
            "build_id": build["build_id"],
            "gpu": "cpu",
            "accelerator": "",
            "compute_capability": "",
            "runtime": "cpu",
            "triton_image": IMAGE,
            "tp": "1",
            "pp": "1",
            # build.json records each file's size; the pin carries their sum for the pod's local disk.
            "size_bytes": str(sum(entry["size"] for entry in build["files"].values())),
        },
    }
    # only model-pin.yaml was written
    assert sorted(p.name for p in overlay.iterdir()) == [
        "alert-thresholds.yaml", "kustomization.yaml", "model-pin.yaml"]


def test_pinning_the_same_build_again_changes_nothing(
    tmp_path: Path, bucket: storage.Bucket, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    uri, _ = published(tmp_path, bucket)
    overlay = overlay_copy(tmp_path, "cpu")
    assert pin_main(["--overlay", str(overlay), uri]) == 0
    pinned = (overlay / "model-pin.yaml").read_text()
    capsys.readouterr()

    assert pin_main(["--overlay", str(overlay), uri.rstrip("/"), "--commit"]) == 0

    assert capsys.readouterr() == ("", f"{overlay}/model-pin.yaml already pins {uri}; nothing to commit\n")
    assert (overlay / "model-pin.yaml").read_text() == pinned


def test_a_real_pin_drops_the_example_note(tmp_path: Path, bucket: storage.Bucket) -> None:  # noqa: F811
    uri, build = published(tmp_path, bucket, gpu="h100")
    overlay = overlay_copy(tmp_path, "h100")
    before = (overlay / "model-pin.yaml").read_text()

    assert pin_main(["--overlay", str(overlay), uri]) == 0

    after = (overlay / "model-pin.yaml").read_text()
    assert header(before)[0].startswith("# EXAMPLE PIN: stands for a build of the default model")
    assert header(before)[1] == "# with a published build."
    kept = header(before)[2:]
    assert header(after) == kept
    assert yaml.safe_load(after)["data"]["compute_capability"] == "9.0"
    assert f'  build_id: "{build["build_id"]}"\n' in after


def test_a_build_for_another_gpu_is_refused_naming_both_sides(
    tmp_path: Path, bucket: storage.Bucket, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    uri, build = published(tmp_path, bucket, gpu="h100")
    overlay = overlay_copy(tmp_path, "l4")
    before = (overlay / "model-pin.yaml").read_text()

    assert pin_main(["--overlay", str(overlay), uri]) == 1

    assert capsys.readouterr().err.splitlines() == [
        f"error: build {build['build_id']} is for gpu 'h100' (accelerator 'nvidia-h100-80gb', compute capability "
        f"'9.0') but {overlay} runs on gpu 'l4' (accelerator 'nvidia-l4', compute capability '8.9'; "
        "build/gpus.toml); build it with: python build/compile.py --gpu l4",
    ]
    assert (overlay / "model-pin.yaml").read_text() == before


def test_a_build_with_another_runtime_or_image_is_refused(
    tmp_path: Path, bucket: storage.Bucket, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    other_image = "nvcr.io/nvidia/tritonserver:25.01-trtllm-python-py3"
    uri, build = published(tmp_path, bucket, gpu="h100", runtime="cpu", triton_image=other_image)
    overlay = overlay_copy(tmp_path, "h100")

    assert pin_main(["--overlay", str(overlay), uri]) == 1

    assert capsys.readouterr().err.splitlines() == [
        f"error: build {build['build_id']} has runtime 'cpu' but {overlay} (h100) runs 'engine' or 'llmapi'; "
        "build it with: python build/compile.py --gpu h100",
        f"error: build {build['build_id']} was made for image {other_image} but {overlay} deploys {IMAGE}; "
        "rebuild it with the versions pinned in build/versions.toml, or change both together",
    ]


def test_a_tensor_parallel_build_is_refused_on_a_one_gpu_overlay(
    tmp_path: Path, bucket: storage.Bucket, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    uri, build = published(tmp_path, bucket, gpu="h100", tp=2)
    overlay = overlay_copy(tmp_path, "h100")
    before = (overlay / "model-pin.yaml").read_text()

    assert pin_main(["--overlay", str(overlay), uri]) == 1

    assert capsys.readouterr().err.splitlines() == [
        f"error: build {build['build_id']} runs on tp 2 × pp 1 = 2 GPUs but {overlay} requests 1 nvidia.com/gpu; "
        "set nvidia.com/gpu (and cpu and memory, per GPU in build/gpus.toml) to 2 in the overlay's gpu.yaml, "
        "or build with: python build/compile.py --gpu h100 --tp 1",
    ]
    assert (overlay / "model-pin.yaml").read_text() == before


def test_a_build_bigger_than_the_overlays_local_disk_is_refused(
    tmp_path: Path, bucket: storage.Bucket, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    uri, build = published(tmp_path, bucket, gpu="h100")
    overlay = overlay_copy(tmp_path, "h100")
    gpu = overlay / "gpu.yaml"
    gpu.write_text(gpu.read_text().replace("sizeLimit: 2Gi", "sizeLimit: 4Ki").replace(
        "ephemeral-storage: 2Gi", "ephemeral-storage: 4Ki"))
    before = (overlay / "model-pin.yaml").read_text()

    assert pin_main(["--overlay", str(overlay), uri]) == 1

    size = sum(entry["size"] for entry in build["files"].values())
    needed = f"{math.ceil(size * 1.25 / 1024 * 100) / 100:g}Ki"
    why = f"build {build['build_id']} is {size} bytes × 1.25 = {needed}"
    where = f"; in {overlay}/gpu.yaml, in the same commit as the pin"
    assert capsys.readouterr().err.splitlines() == [
        f"error: Deployment/triton: emptyDir models has sizeLimit 4Ki, but {why}; the kubelet would evict the pod "
        f"during the copy; set sizeLimit to at least {needed}{where}",
        f"error: Deployment/triton: container triton requests ephemeral-storage 4Ki, but {why}; the scheduler could "
        f"place the pod on a node without room for it; request at least {needed}{where}",
    ]
    assert (overlay / "model-pin.yaml").read_text() == before


def test_a_tensor_parallel_build_pins_where_the_overlay_requests_its_gpus(
    tmp_path: Path, bucket: storage.Bucket  # noqa: F811
) -> None:
    uri, build = published(tmp_path, bucket, gpu="h200", tp=4, pp=2)
    overlay = overlay_copy(tmp_path, "h200")
    gpu = overlay / "gpu.yaml"
    gpu.write_text(gpu.read_text().replace('nvidia.com/gpu: "1"', 'nvidia.com/gpu: "8"'))

    assert pin_main(["--overlay", str(overlay), uri]) == 0

    after = (overlay / "model-pin.yaml").read_text()
    assert '  tp: "4"\n  pp: "2"\n' in after
    assert yaml.safe_load(after)["data"]["build_id"] == build["build_id"]


def test_an_overlay_that_does_not_render_is_refused(
    tmp_path: Path, bucket: storage.Bucket, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    uri, _ = published(tmp_path, bucket, gpu="h100")
    overlay = overlay_copy(tmp_path, "h100")
    (overlay / "gpu.yaml").unlink()

    assert pin_main(["--overlay", str(overlay), uri]) == 1

    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"error: cannot render {overlay}: ")
    assert "failed to get the patch file from path(gpu.yaml)" in "\n".join(lines)
    assert lines[-1].endswith(f"; fix it first (python tools/validate.py {overlay})")


def test_a_uri_that_is_not_the_builds_own_path_is_refused(
    tmp_path: Path, bucket: storage.Bucket, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    uri, build = published(tmp_path, bucket)
    copy = f"gs://{bucket.name}/latest/"
    original = bucket.blob(uri.removeprefix(f"gs://{bucket.name}/") + "build.json")
    bucket.copy_blob(original, bucket, "latest/build.json")

    assert pin_main(["--overlay", str(overlay_copy(tmp_path, "cpu")), copy]) == 1

    assert capsys.readouterr().err == (
        f"error: {copy} holds build {build['build_id']} of {MODEL}, whose published path ends in "
        f"{MODEL}/{build['build_id']}/; pin the URI that tools/publish.py printed\n"
    )


def test_a_build_that_was_never_published_is_refused(
    tmp_path: Path, bucket: storage.Bucket, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    uri = f"gs://{bucket.name}/builds/{MODEL}/0123456789abcdef/"

    assert pin_main(["--overlay", str(overlay_copy(tmp_path, "cpu")), uri]) == 1

    assert capsys.readouterr().err == (
        f"error: {uri}build.json does not exist; "
        "publish the build first: python tools/publish.py DIR gs://BUCKET/PREFIX\n"
    )


def test_an_overlay_without_a_pin_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overlay = tmp_path / "overlays" / "cpu"
    overlay.mkdir(parents=True)

    assert pin_main(["--overlay", str(overlay), "gs://models/builds/x/0123456789abcdef/"]) == 1

    assert capsys.readouterr().err == (
        f"error: {overlay}/model-pin.yaml does not exist; "
        "an overlay serves a pinned model only if it has one (copy it from another overlay)\n"
    )


def test_compile_py_publishes_the_cpu_build_and_it_pins(
    tmp_path: Path, bucket: storage.Bucket, cpu_repository: Path  # noqa: F811
) -> None:
    # cpu_repository (conftest) has built it already: compile.py finds it up to date and publishes.
    out = run(sys.executable, ROOT / "build/compile.py", "--gpu", "cpu", "--out", cpu_repository,
              "--publish", f"gs://{bucket.name}/builds")
    build = json.loads((cpu_repository / "build.json").read_text())
    uri = f"gs://{bucket.name}/builds/{build['model']['name']}/{build['build_id']}/"
    assert out.splitlines()[-1] == uri
    overlay = overlay_copy(tmp_path, "cpu")

    assert pin_main(["--overlay", str(overlay), uri]) == 0

    assert yaml.safe_load((overlay / "model-pin.yaml").read_text())["data"]["uri"] == uri


def render(clone: Path, overlay: str) -> list[str]:
    return run("kubectl", "kustomize", clone / overlay).splitlines()


def test_publish_pin_commit_push_changes_only_the_model_location(
    tmp_path: Path, bucket: storage.Bucket, git_identity: None, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    remote, work = tmp_path / "remote.git", tmp_path / "work"
    run("git", "clone", "--quiet", "--bare", ROOT, remote)
    run("git", "clone", "--quiet", remote, work)
    before = run("git", "-C", work, "rev-parse", "HEAD").strip()
    old_pin = yaml.safe_load((work / "overlays/cpu/model-pin.yaml").read_text())["data"]
    uri, build = published(tmp_path, bucket)

    assert pin_main(["--overlay", str(work / "overlays/cpu"), uri, "--commit"]) == 0
    run("git", "-C", work, "push", "--quiet", "origin", "HEAD")

    pushed = capsys.readouterr().out.strip()
    assert run("git", "-C", remote, "rev-parse", "HEAD").strip() == pushed
    assert run("git", "-C", remote, "log", "-1", "--format=%s%n%P", pushed).splitlines() == [
        f"Pin {MODEL} {build['build_id']} for cpu",
        before,
    ]
    assert run("git", "-C", remote, "diff", "--name-only", before, pushed).splitlines() == [
        "overlays/cpu/model-pin.yaml"
    ]
    fresh_after, fresh_before = tmp_path / "after", tmp_path / "before"
    run("git", "clone", "--quiet", remote, fresh_after)
    run("git", "clone", "--quiet", remote, fresh_before)
    run("git", "-C", fresh_before, "checkout", "--quiet", before)
    renders = [render(clone, "overlays/cpu") for clone in (fresh_before, fresh_after)]
    rendered = difflib.unified_diff(*renders, n=0)
    diff = [line for line in rendered if line[:1] in "+-" and line[:3] not in ("---", "+++")]
    # Where the build is (the URI fetch-model names, the FUSE volume's bucket and prefix) and which it is
    # (the build id fetch-model checks, and the label): what the model-pin component derives from the pin.
    new_prefix = f"builds/{MODEL}/{build['build_id']}"
    assert sorted(line[0] + line[1:].strip() for line in diff) == sorted([
        f"-gke-triton-llm/build-id: {old_pin['build_id']}",
        f"+gke-triton-llm/build-id: {build['build_id']}",
        f"-value: {old_pin['uri']}",
        f"+value: {uri}",
        f"-value: {old_pin['build_id']}",
        f"+value: {build['build_id']}",
        f"-bucketName: {old_pin['bucket']}",
        f"+bucketName: {bucket.name}",
        f"-mountOptions: implicit-dirs,only-dir={old_pin['prefix']}",
        f"+mountOptions: implicit-dirs,only-dir={new_prefix}",
    ])

