"""Every image build runs the gate: the cloudbuild files of the gateway, the compile Job and the Triton copy
push (or copy), scan the pushed digest, gate, attest and print the digest, in that order; the built
images also get their SBOM. Cloud Build cannot run here: the order is read from the files, the gcloud
flags are checked against the commands recorded in tools/policy/scan_facts.toml, and the gate and
SBOM steps' own scripts are run here with Cloud Build's substitutions applied."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from policy import images  # the validator's rule for what is versions.toml's Triton copy

ROOT = Path(__file__).resolve().parent.parent
BUILDS = {
    "gateway/cloudbuild.yaml": "gateway/Dockerfile",
    "gitops/jobs/compile-engine/cloudbuild.yaml": "gitops/jobs/compile-engine/Dockerfile",
    "security/mirror-cloudbuild.yaml": None,  # copies Triton, builds nothing
}
FACTS = tomllib.loads((ROOT / "tools" / "policy" / "scan_facts.toml").read_text())
SCANS = ROOT / "tests" / "fixtures" / "scans"
DIGEST = "sha256:" + "4f" * 32
IMAGE = f"us-docker.pkg.dev/my-project/gke-triton-llm/gateway@{DIGEST}"


def load(build: str) -> dict:
    return yaml.safe_load((ROOT / build).read_text())


def steps(build: str) -> dict[str, dict]:
    return {step["id"]: step for step in load(build)["steps"]}


def happens_before(build: str) -> dict[str, set[str]]:
    """Every step's predecessors, as Cloud Build orders them: a step without waitFor waits for all the
    steps before it, one with waitFor for those
    (https://cloud.google.com/build/docs/configuring-builds/configure-build-step-order)."""
    order: dict[str, set[str]] = {}
    seen: list[str] = []
    for step in load(build)["steps"]:
        direct = step.get("waitFor", seen)
        order[step["id"]] = set(direct).union(*(order[d] for d in direct))
        seen.append(step["id"])
    return order


def script(step: dict, substitutions: dict[str, str], workspace: Path) -> str:
    """The step's shell script as Cloud Build hands it over: $$ is a literal $, $_X a substitution."""
    text = step["args"][-1].replace("$$", "\0")
    for key in sorted(substitutions, key=len, reverse=True):
        text = text.replace(f"${key}", substitutions[key])
    return text.replace("\0", "$").replace("/workspace", str(workspace))


def flags(command: str) -> list[str]:
    return re.findall(r"--[a-z-]+", command)


def test_every_image_the_project_builds_has_a_gated_build_beside_its_dockerfile() -> None:
    dockerfiles = subprocess.run(["git", "ls-files", "*Dockerfile"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split()
    assert sorted(d for d in BUILDS.values() if d) == sorted(dockerfiles)
    for build, dockerfile in BUILDS.items():
        if dockerfile:
            assert Path(build).parent == Path(dockerfile).parent
            step = steps(build)["build"]
            command = step["args"] if step.get("entrypoint") != "bash" else step["args"][-1].split()[1:]
            assert command[:3] == ["build", "-f", dockerfile]


@pytest.mark.parametrize("build", BUILDS)
def test_the_digest_is_scanned_gated_and_attested_in_that_order(build: str) -> None:
    before = happens_before(build)
    first = "copy" if BUILDS[build] is None else "push"
    assert first in before["scan"] and "scan" in before["gate"] and "gate" in before["attest"]
    assert "attest" in before["digest"]
    if BUILDS[build]:
        assert "build" in before["push"]
        assert "push" in before["sbom"] and {"sbom", "gate"} <= before["sbom-upload"]
        assert "sbom-upload" in before["digest"]
    else:
        assert "sbom" not in before  # nothing built: the scan lists the copied image's packages


@pytest.mark.parametrize("build", BUILDS)
def test_the_gcloud_steps_use_the_recorded_commands(build: str) -> None:
    found = steps(build)
    scan = found["scan"]["args"][-1]
    assert "gcloud artifacts docker images scan" in scan
    assert set(flags(FACTS["scan_remote"]["value"])) <= set(flags(scan))
    assert "gcloud artifacts docker images list-vulnerabilities" in scan and "--format=json" in scan
    attest = found["attest"]["args"][-1]
    assert "gcloud container binauthz attestations sign-and-create" in attest
    assert set(flags(FACTS["attest_kms"]["value"])) == set(flags(attest))
    if BUILDS[build]:
        upload = found["sbom-upload"]["args"][-1]
        assert upload.startswith("gcloud artifacts sbom load")
        assert set(flags(FACTS["sbom_load"]["value"])) == set(flags(upload))
        assert f"--dockerfile {BUILDS[build]}" in found["sbom"]["args"][-1]


def test_the_three_builds_share_one_scan_gate_and_attest() -> None:
    shared = [{k: steps(b)[k] for k in ("scan", "gate", "attest")} for b in BUILDS]
    assert shared[0] == shared[1] == shared[2]
    assert load("gateway/cloudbuild.yaml")["substitutions"] == load("security/mirror-cloudbuild.yaml")["substitutions"]
    assert load("gateway/cloudbuild.yaml")["substitutions"] == load(
        "gitops/jobs/compile-engine/cloudbuild.yaml")["substitutions"]


@pytest.mark.parametrize(
    "scan, code", [("gateway-fixable-critical.json", 1), ("unfixable-only", 0)]
)
def test_the_gate_step_runs_here_and_fails_the_build_on_a_fixable_critical(tmp_path: Path, scan, code) -> None:
    findings = json.loads((SCANS / "gateway-fixable-critical.json").read_text())
    if scan == "unfixable-only":
        findings = [o for o in findings if not o.get("vulnerability", {}).get("fixAvailable", True)]
    (tmp_path / "vulnerabilities.json").write_text(json.dumps(findings))
    (tmp_path / "image.txt").write_text(IMAGE + "\n")
    step = steps("gateway/cloudbuild.yaml")["gate"]
    text = script(step, load("gateway/cloudbuild.yaml")["substitutions"], tmp_path)
    done = subprocess.run([step["entrypoint"], *step["args"][:-1], text], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == code, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("PASSED" if code == 0 else "allowlist them")


def base_step(tmp_path: Path, versions: str) -> subprocess.CompletedProcess:
    """The compile image's `base` step, run here on a checkout whose build/versions.toml is `versions`."""
    build = "gitops/jobs/compile-engine/cloudbuild.yaml"
    checkout = tmp_path / "checkout"
    (checkout / "build").mkdir(parents=True)
    (checkout / "build" / "versions.toml").write_text(versions)
    step = steps(build)["base"]
    text = script(step, {**load(build)["substitutions"], "PROJECT_ID": "my-project"}, tmp_path)
    text = text.replace("python3 ", f"{sys.executable} ")  # the step image's python: this one
    return subprocess.run(["bash", "-ceu", text], cwd=checkout, capture_output=True, text=True)


def test_the_compile_image_is_built_from_the_scanned_triton_copy_by_digest(tmp_path: Path) -> None:
    pinned = (ROOT / "build" / "versions.toml").read_text()
    digest = "sha256:" + "5e" * 32
    versions = re.sub(r'(?m)^digest = ".*"$', f'digest = "{digest}"', pinned)
    done = base_step(tmp_path, versions)
    assert done.returncode == 0, done.stderr
    base = (tmp_path / "base.txt").read_text().strip()
    upstream = tomllib.loads(pinned)["triton"]["image"]
    assert base == f"us-docker.pkg.dev/my-project/nvcr/{upstream.removeprefix('nvcr.io/').rsplit(':', 1)[0]}@{digest}"
    assert images.is_copy(base, upstream, digest)
    # the nvcr repository is gitops/supply-chain's, in the us location the step names
    repositories = yaml.safe_load_all((ROOT / "gitops/supply-chain/repositories.yaml").read_text())
    assert {r["metadata"]["name"]: r["spec"]["location"] for r in repositories}["nvcr"] == "us"
    # the build step hands it to the Dockerfile's only FROM, an ARG with no default
    build = steps("gitops/jobs/compile-engine/cloudbuild.yaml")["build"]["args"][-1]
    assert '--build-arg TRITON_IMAGE="$$(cat /workspace/base.txt)"' in build
    dockerfile = (ROOT / "gitops/jobs/compile-engine/Dockerfile").read_text().splitlines()
    assert [line for line in dockerfile if line.startswith(("ARG ", "FROM "))] == ["ARG TRITON_IMAGE",
                                                                                "FROM ${TRITON_IMAGE}"]


def test_the_compile_image_build_stops_on_the_stand_in_triton_digest(tmp_path: Path) -> None:
    done = base_step(tmp_path, (ROOT / "build" / "versions.toml").read_text())  # this template's all zeros
    assert done.returncode == 1
    assert done.stderr.strip() == ("build/versions.toml [triton] digest is the all-zero stand-in: copy Triton "
                                   "through the image gate and pin it first (docs/runbook.md step 3b)")


def test_the_sbom_step_runs_here(tmp_path: Path) -> None:
    # the gateway's; the compile Job's differs only in --dockerfile (checked above), and tests/test_sbom.py
    # makes and validates both images' SBOMs
    build = "gateway/cloudbuild.yaml"
    step = steps(build)["sbom"]
    (tmp_path / "image.txt").write_text(IMAGE + "\n")
    lines = script(step, load(build)["substitutions"], tmp_path).splitlines()
    # the install line: cyclonedx-bom from security/sbom-requirements.txt, in the venv already (test_sbom.py)
    assert lines[0] == "python3 -m pip install --quiet --no-cache-dir -r security/sbom-requirements.txt"
    text = "\n".join(lines[1:]).replace("python3 ", f"{sys.executable} ")  # the image's python: this one
    done = subprocess.run(["bash", "-ceu", text], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "sbom.cdx.json").read_text())
    assert document["metadata"]["component"]["version"] == DIGEST


def test_the_builds_attest_with_the_attestor_and_key_gitops_creates() -> None:
    admission = ROOT / "gitops" / "supply-chain" / "admission.yaml"
    if not admission.is_file():
        pytest.skip("gitops/supply-chain/admission.yaml (the attestor) is not in this checkout")
    objects = list(yaml.safe_load_all(admission.read_text()))
    [attestor] = [o for o in objects if o["kind"] == "BinaryAuthorizationAttestor"]
    substitutions = load("gateway/cloudbuild.yaml")["substitutions"]
    assert attestor["metadata"]["name"] == substitutions["_ATTESTOR"]
    key = attestor["spec"]["userOwnedDrydockNote"]["publicKeys"][0]["id"]
    assert key.endswith(
        f"/locations/{substitutions['_KMS_LOCATION']}/keyRings/{substitutions['_KMS_KEYRING']}"
        f"/cryptoKeys/{substitutions['_KMS_KEY']}/cryptoKeyVersions/{substitutions['_KMS_KEY_VERSION']}"
    )
