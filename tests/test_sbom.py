"""tools/sbom.py makes each built image's CycloneDX SBOM from the pinned requirements its Dockerfile installs:
run here with cyclonedx-py, validated against the CycloneDX 1.5 schema by cyclonedx-python-lib."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import sbom
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

ROOT = Path(__file__).resolve().parent.parent
DIGEST = "sha256:" + "c" * 64
# Every image this repository builds: each Dockerfile in the tree.
DOCKERFILES = sorted(
    subprocess.run(["git", "ls-files", "*Dockerfile"], cwd=ROOT, capture_output=True, text=True,
                   check=True).stdout.split()
)


def test_the_project_builds_the_gateway_and_compile_images() -> None:
    assert DOCKERFILES == ["gateway/Dockerfile", "gitops/jobs/compile-engine/Dockerfile"]


def image_of(dockerfile: str) -> str:
    return f"us-docker.pkg.dev/my-project/gke-triton-llm/{Path(dockerfile).parent.name}@{DIGEST}"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each image's SBOM as the command writes it (cyclonedx-py takes seconds: once per module)."""
    texts = {}
    for dockerfile in DOCKERFILES:
        out = tmp_path_factory.mktemp("sbom") / "sbom.cdx.json"
        args = ["--dockerfile", str(ROOT / dockerfile), "--image", image_of(dockerfile), "--out", str(out)]
        assert sbom.main(args) == 0
        texts[dockerfile] = out.read_text()
    return texts


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_each_images_sbom_is_valid_cyclonedx_and_lists_every_pinned_requirement(written, dockerfile) -> None:
    image = image_of(dockerfile)
    text = written[dockerfile]
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(text) is None
    document = json.loads(text)
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.5"
    assert document["metadata"]["component"] == {
        "type": "container", "bom-ref": image, "name": image.split("@")[0], "version": DIGEST}
    requirements = sbom.requirements_file(ROOT / dockerfile)
    assert requirements.parent == (ROOT / dockerfile).parent  # the file beside the Dockerfile
    pins = sbom.pinned_requirements(requirements)
    assert pins  # the parser found the file's pins
    purls = {c["purl"] for c in document["components"]}
    for name, version in pins.items():
        assert f"pkg:pypi/{name}@{version}" in purls, f"{name}=={version} of {requirements} is not in the SBOM"
    [root] = [d for d in document["dependencies"] if d["ref"] == image]
    assert len(root["dependsOn"]) == len(document["components"])


def test_a_requirement_that_is_not_pinned_is_refused_by_line(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pinned\nstarlette==1.10.0\nuvicorn>=0.30\n")
    with pytest.raises(sbom.SbomError, match=r"requirements.txt:3: 'uvicorn>=0.30' is not pinned \(name==version\)"):
        sbom.pinned_requirements(requirements)


def test_an_sbom_missing_a_pinned_requirement_is_refused(written) -> None:
    document = json.loads(written["gitops/jobs/compile-engine/Dockerfile"])
    assert sbom.problems(document, {"rich": "14.3.4", "google-cloud-storage": "3.17.1"}) == []
    assert sbom.problems(document, {"rich": "14.3.5"}) == ["rich==14.3.5 is not in it"]
    broken = dict(document, components=[{"name": "rich"}])  # no type: not CycloneDX
    assert sbom.problems(broken, {})[0].startswith("not valid CycloneDX 1.5")


def test_the_builds_pin_the_generator_in_pyprojects_range() -> None:
    pinned = (ROOT / "security" / "sbom-requirements.txt").read_text()
    assert "cyclonedx-bom==7.5.0" in pinned.splitlines()
    assert '"cyclonedx-bom>=7.5,<8"' in (ROOT / "pyproject.toml").read_text()
