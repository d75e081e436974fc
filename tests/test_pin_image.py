"""tools/pin_image.py writes a gated image's digest into kustomize `images:` entries, on a scratch copy of
gitops/ and overlays/ (the `repo` fixture), rendered with the real kustomize afterwards."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pin_image
import pytest
import validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
DIGEST = "sha256:" + "a" * 64
NEWER = "sha256:" + "b" * 64
GATEWAY = f"us-docker.pkg.dev/my-project/gke-triton-llm/gateway@{DIGEST}"
EXAMPLE_GATEWAY = "us-docker.pkg.dev/example-project/gke-triton-llm/gateway"


def images_of(directory: Path, container: str) -> set[str]:
    return {
        c["image"]
        for obj in validate.render(directory)
        for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        if c["name"] == container
    }


def entries(directory: Path) -> list[dict]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text()).get("images", [])


def test_an_overlay_gets_an_entry_for_the_bases_image_and_renders_the_digest(repo: Path, capsys) -> None:
    overlay = repo / "overlays" / "cpu"
    before = (overlay / "kustomization.yaml").read_text()
    assert pin_image.main([GATEWAY, str(overlay)]) == 0
    after = (overlay / "kustomization.yaml").read_text()
    assert after.startswith(before)  # the rest of the file, comments included, as it was
    assert entries(overlay) == [{"name": EXAMPLE_GATEWAY, "newName": GATEWAY.split("@")[0], "digest": DIGEST}]
    assert images_of(overlay, "gateway") == {GATEWAY}
    assert "git commit -m 'Pin gateway sha256:aaaa" in capsys.readouterr().out

    # a newer build replaces the entry; the same one again changes nothing
    newer = GATEWAY.replace(DIGEST, NEWER)
    assert pin_image.main([newer, str(overlay)]) == 0
    assert entries(overlay) == [{"name": EXAMPLE_GATEWAY, "newName": GATEWAY.split("@")[0], "digest": NEWER}]
    assert images_of(overlay, "gateway") == {newer}
    assert pin_image.main([newer, str(overlay)]) == 0
    assert "already pin" in capsys.readouterr().err


def test_the_compile_jobs_tag_becomes_a_digest_and_its_comments_stay(repo: Path) -> None:
    job = repo / "gitops" / "jobs" / "compile-engine"
    image = f"us-docker.pkg.dev/my-project/gke-triton-llm/compile-engine@{DIGEST}"
    comments = [line for line in (job / "kustomization.yaml").read_text().splitlines() if line.startswith("#")]
    assert pin_image.main([image, str(job)]) == 0
    text = (job / "kustomization.yaml").read_text()
    assert [line for line in text.splitlines() if line.startswith("#")] == comments
    assert "newTag" not in text
    assert images_of(job, "compile") == {image}


def test_only_the_matching_entry_of_several_is_rewritten(repo: Path) -> None:
    base = repo / "gitops" / "base"
    mirrored = f"us-docker.pkg.dev/my-project/nvcr-mirror/nvidia/tritonserver@{DIGEST}"
    before = entries(base)
    text = (base / "kustomization.yaml").read_text()
    assert pin_image.plan(base, mirrored).new.count("#") == text.count("#")  # the comment between entries stays
    edit = pin_image.plan(base, mirrored)
    after = yaml.safe_load(edit.new)["images"]
    assert after[0] == {"name": "tritonserver", "newName": mirrored.split("@")[0], "digest": DIGEST}
    assert after[1:] == before[1:]


@pytest.mark.parametrize(
    "reference, message",
    [
        ("us-docker.pkg.dev/my-project/gke-triton-llm/gateway:v1", "is not pinned by digest"),
        ("us-docker.pkg.dev/my-project/gke-triton-llm/gateway", "is not pinned by digest"),
        ("us-docker.pkg.dev/my-project/gke-triton-llm/gateway@sha256:abc", "64 lowercase hex digits"),
        (f"us-docker.pkg.dev/my-project/gke-triton-llm/gateway:v1@{DIGEST}", "(no tag)"),
    ],
)
def test_a_reference_that_is_not_a_digest_is_refused_and_nothing_changes(repo: Path, capsys, reference, message):
    overlay = repo / "overlays" / "cpu"
    before = (overlay / "kustomization.yaml").read_text()
    assert pin_image.main([reference, str(overlay)]) == 1
    assert message in capsys.readouterr().err
    assert (overlay / "kustomization.yaml").read_text() == before


def test_a_directory_that_does_not_run_the_image_is_refused(repo: Path, capsys) -> None:
    job = repo / "gitops" / "jobs" / "compile-engine"
    before = (job / "kustomization.yaml").read_text()
    assert pin_image.main([GATEWAY, str(job)]) == 1
    assert f"{job} runs no image named gateway: nothing to pin there" in capsys.readouterr().err
    assert (job / "kustomization.yaml").read_text() == before


def test_a_failed_write_leaves_every_file_whole_as_it_was(repo: Path, monkeypatch) -> None:
    overlays = [repo / "overlays" / "cpu", repo / "overlays" / "l4"]
    before = {d: (d / "kustomization.yaml").read_text() for d in overlays}
    real_replace, calls = os.replace, []

    def replace_then_fail(source, target):
        calls.append(target)
        if len(calls) == 2:  # the second file's rename: the disk is full, say
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(pin_image.os, "replace", replace_then_fail)
    with pytest.raises(OSError):
        pin_image.pin(GATEWAY, overlays)
    for directory in overlays:
        assert (directory / "kustomization.yaml").read_text() == before[directory]
        assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []  # no temporary left


def copy_versions(repo: Path) -> Path:
    """build/versions.toml in the scratch checkout, as the template has it (the all-zero digest)."""
    (repo / "build").mkdir()
    versions = repo / "build" / "versions.toml"
    versions.write_text((ROOT / "build" / "versions.toml").read_text())
    return versions


def test_the_triton_copy_is_pinned_in_the_base_and_in_versions_toml_in_one_step(repo: Path, capsys) -> None:
    versions = copy_versions(repo)
    base = repo / "gitops" / "base"
    copy = f"us-docker.pkg.dev/my-project/nvcr/nvidia/tritonserver@{DIGEST}"
    before = versions.read_text()
    assert pin_image.main([copy, str(base)]) == 0
    pinned = tomllib.loads(versions.read_text())["triton"]
    assert pinned["digest"] == DIGEST
    assert pinned["image"] == tomllib.loads(before)["triton"]["image"]  # the tag builds record stays
    # only the digest line changed, comments and every other table as they were
    assert [a for a, b in zip(before.splitlines(), versions.read_text().splitlines(), strict=True) if a != b] == [
        f'digest = "sha256:{"0" * 64}"']
    assert entries(base)[0] == {"name": "tritonserver", "newName": copy.split("@")[0], "digest": DIGEST}
    assert images_of(base, "triton") == {copy}
    assert f"{base / 'kustomization.yaml'} {versions}" in capsys.readouterr().out  # the commit names both


def test_a_triton_image_that_is_not_the_pinned_ones_copy_is_refused_and_nothing_changes(repo: Path, capsys):
    versions = copy_versions(repo)
    base = repo / "gitops" / "base"
    before = {f: f.read_text() for f in (versions, base / "kustomization.yaml")}
    other = f"us-docker.pkg.dev/my-project/nvcr/nvidia/other/tritonserver@{DIGEST}"
    assert pin_image.main([other, str(base)]) == 1
    assert (f"{other} is not nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3 copied into Artifact Registry"
            in capsys.readouterr().err)
    assert {f: f.read_text() for f in before} == before


def test_pinning_triton_outside_a_checkout_with_versions_toml_is_refused(repo: Path, capsys) -> None:
    base = repo / "gitops" / "base"
    assert pin_image.main([f"us-docker.pkg.dev/my-project/nvcr/nvidia/tritonserver@{DIGEST}", str(base)]) == 1
    assert "pinning Triton writes build/versions.toml too; 0 such files hold" in capsys.readouterr().err
