"""Write the CycloneDX SBOM of an image this project builds, from the pinned requirements its Dockerfile installs.

The Dockerfile names the requirements file it copies in (gateway/Dockerfile: gateway/requirements.txt;
gitops/jobs/compile-engine/Dockerfile: its requirements.txt); every requirement there must be pinned
exactly (name==version). cyclonedx-py (security/sbom-requirements.txt pins it) turns the file into a
CycloneDX 1.5 JSON document, the version Artifact Analysis takes (tools/policy/scan_facts.toml,
sbom_load); the image is its metadata.component, by digest when --image gives one. The document is
validated against the CycloneDX 1.5 schema (cyclonedx-python-lib's validator) and must list every
pinned requirement at its version before it is written. The image builds run this and upload the
result beside the image with `gcloud artifacts sbom load`. It covers what pip installs: the base
image's own packages are in the scan (Artifact Analysis lists them), not here.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

REPO = Path(__file__).resolve().parent.parent
SPEC_VERSION = "1.5"
COPY = re.compile(r"^\s*COPY\s+(?:--\S+\s+)*(?P<source>\S*requirements\.txt)\s+\S+", re.I | re.M)
PINNED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;#]+)\s*(?:#.*)?$")


class SbomError(Exception):
    """No SBOM can be made; the message says why and what to do."""


def normalize(name: str) -> str:
    """A package name as PyPI compares names (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_file(dockerfile: Path) -> Path:
    """The requirements file the Dockerfile copies in, relative to the build context (the repository root)."""
    sources = COPY.findall(dockerfile.read_text())
    if len(sources) != 1:
        raise SbomError(f"{dockerfile} copies {len(sources)} *requirements.txt files; an SBOM needs exactly one")
    return REPO / sources[0]


def pinned_requirements(path: Path) -> dict[str, str]:
    """{normalized name: version} of every requirement; anything not pinned with == is refused by line."""
    pins = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PINNED.match(line)
        if not match:
            raise SbomError(
                f"{path}:{number}: {line!r} is not pinned (name==version): an image's SBOM lists exact versions"
            )
        pins[normalize(match["name"])] = match["version"]
    return pins


def generate(requirements: Path) -> dict:
    """cyclonedx-py's CycloneDX document for a requirements file."""
    command = [sys.executable, "-m", "cyclonedx_py", "requirements", str(requirements),
               "--sv", SPEC_VERSION, "--of", "JSON", "--output-reproducible", "-o", "-"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        if "No module named cyclonedx_py" in done.stderr:
            raise SbomError("cyclonedx-py is not installed: pip install -r security/sbom-requirements.txt")
        raise SbomError(f"cyclonedx-py failed on {requirements}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def describe_image(document: dict, image: str) -> dict:
    """The document with the image as the component it describes, depending on every package."""
    name, _, digest = image.partition("@")
    root = {"type": "container", "bom-ref": image, "name": name}
    if digest:
        root["version"] = digest
    described = dict(document)
    described["metadata"] = {**document.get("metadata", {}), "component": root}
    refs = [c["bom-ref"] for c in document.get("components", [])]
    described["dependencies"] = [{"ref": image, "dependsOn": refs}, *document.get("dependencies", [])]
    return described


def problems(document: dict, pins: dict[str, str]) -> list[str]:
    """Schema errors, and pinned requirements the document does not list at their version."""
    error = JsonStrictValidator(SchemaVersion.from_version(SPEC_VERSION)).validate_str(json.dumps(document))
    found = [f"not valid CycloneDX {SPEC_VERSION}: {str(error).splitlines()[-1]}"] if error else []
    listed = {normalize(c["name"]): c.get("version") for c in document.get("components", [])}
    found += [f"{name}=={version} is not in it" for name, version in pins.items() if listed.get(name) != version]
    return found


def build(dockerfile: Path, image: str) -> dict:
    requirements = requirements_file(dockerfile)
    pins = pinned_requirements(requirements)
    document = describe_image(generate(requirements), image)
    found = problems(document, pins)
    if found:
        raise SbomError(f"the SBOM of {requirements} is wrong: " + "; ".join(found))
    return document


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbom.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python tools/sbom.py --dockerfile gateway/Dockerfile --image gateway --out out/sbom/gateway.cdx.json\n"
            "  python tools/sbom.py --dockerfile gitops/jobs/compile-engine/Dockerfile \\\n"
            "      --image us-docker.pkg.dev/my-project/gke-triton-llm/compile-engine@sha256:<digest> --out sbom.json\n"
            "\nThe cloudbuild files run it and upload the file: gcloud artifacts sbom load --source=FILE --uri=IMAGE."
        ),
    )
    parser.add_argument("--dockerfile", type=Path, required=True, help="the image's Dockerfile")
    parser.add_argument("--image", required=True, help="the image the SBOM describes (IMAGE@sha256:DIGEST when pushed)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the CycloneDX JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        document = build(args.dockerfile, args.image)
    except (SbomError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    print(f"* {len(document['components'])} packages of {args.image} in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
