"""Where the images the cluster runs come from, and the admission policy that holds the cluster to it.

Every container and init container of every rendered overlay and Job runs an image pinned by digest,
from one of the Artifact Registry repositories gitops/supply-chain creates in the policy's project,
or one the Binary Authorization policy allows by name; the policy requires the attestation of an
attestor that exists, whose note is the one created beside it (gitops/supply-chain/admission.yaml).

This repository is a template: the project (`example-project`), the digests (all zeros) and the
attestor's public key are stand-ins. `placeholders` lists them, which tools/validate.py reports and
passes; `tools/validate.py --before-push` treats each as a problem. Upstream facts: image_facts.toml.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import catalog

from .gateway import EXAMPLE_PROJECT
from .k8s_objects import by_kind, containers, pod_spec, ref

FACTS = tomllib.loads(Path(__file__).resolve().with_name("image_facts.toml").read_text())
_DIGEST = re.compile(FACTS["digest"]["value"])
_AR_HOST = re.compile(FACTS["artifact_registry_docker_host"]["value"])
EVALUATION_MODES = FACTS["binauthz_evaluation_modes"]["value"]
ENFORCEMENT_MODES = FACTS["binauthz_enforcement_modes"]["value"]
GLOBAL_POLICY = FACTS["binauthz_global_policy"]["value"]
CLUSTER_MODE = FACTS["gke_binauthz_evaluation_mode"]["value"]

# This template's stand-ins, named so that nobody mistakes them for real values.
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
PLACEHOLDER_KEY = "EXAMPLE-PUBLIC-KEY"
RUNBOOK_STEP = "docs/runbook.md steps 3b, 8"

_POLICY, _ATTESTOR, _NOTE = "BinaryAuthorizationPolicy", "BinaryAuthorizationAttestor", "ContainerAnalysisNote"
_RULES = ("clusterAdmissionRules", "kubernetesNamespaceAdmissionRules", "kubernetesServiceAccountAdmissionRules",
          "istioServiceIdentityAdmissionRules")


@dataclass(frozen=True)
class Image:
    """An image reference split as a registry reads it: host, path (no tag), tag, digest."""

    host: str
    path: str
    tag: str
    digest: str

    @property
    def name(self) -> str:
        """host/path, what an allowlist pattern and a repository are matched against."""
        return f"{self.host}/{self.path}"


def parse(reference: str) -> Image:
    rest, _, digest = reference.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    rest, tag = (rest[:colon], rest[colon + 1:]) if colon > slash else (rest, "")
    first, _, remainder = rest.partition("/")
    # Docker's rule: the first component is a registry when it looks like a host.
    if remainder and ("." in first or ":" in first or first == "localhost"):
        return Image(first, remainder, tag, digest)
    return Image("docker.io", rest if remainder else f"library/{rest}", tag, digest)


@dataclass(frozen=True)
class Registry:
    """What the supply-chain objects allow: the project, its repositories by location, the policy's patterns."""

    project: str | None
    repositories: dict[str, str]  # repository name -> location
    patterns: list[str]

    def repository_of(self, image: Image) -> str | None:
        """The repository of this registry that holds `image`, or None."""
        match = _AR_HOST.match(image.host)
        parts = image.path.split("/")
        if match is None or len(parts) < 3 or parts[0] != self.project:
            return None
        repository = parts[1]
        return repository if self.repositories.get(repository) == match["location"] else None

    def allows(self, image: Image) -> bool:
        # A pattern may name the image alone, or with its tag or digest.
        names = {image.name, f"{image.name}:{image.tag}", f"{image.name}@{image.digest}"}
        return any(pattern_matches(p, n) for p in self.patterns for n in names)

    def example(self) -> str:
        where = ", ".join(f"{loc}-docker.pkg.dev/{self.project}/{name}/…" for name, loc in self.repositories.items())
        return where or "none: gitops/supply-chain has no ArtifactRegistryRepository"


def triton_digest() -> str:
    """The digest nvcr.io serves for build/versions.toml's Triton tag, which its Artifact Registry copy keeps."""
    return catalog.versions()["triton"]["digest"]


def is_copy(deployed: str, upstream: str, digest: str) -> bool:
    """Whether `deployed` is `upstream` copied into some Artifact Registry repository with its digest kept:
    LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/<upstream's path>@digest."""
    ours, theirs = parse(deployed), parse(upstream)
    return (bool(_AR_HOST.match(ours.host)) and ours.digest == digest and not ours.tag
            and ours.path.split("/", 2)[2:] == [theirs.path])


def as_built(deployed: str) -> str:
    """The image builds record for the one a Triton container runs: build/versions.toml's nvcr.io tag
    where it runs that image's Artifact Registry copy by the recorded digest, else what it runs, as it is.
    The pin gate compares this with a build's `triton_image` (tools/validate.py and tools/pin.py)."""
    upstream = catalog.versions()["triton"]["image"]
    return upstream if is_copy(deployed, upstream, triton_digest()) else deployed


def pattern_matches(pattern: str, name: str) -> bool:
    """Binary Authorization's allowlist match (image_facts.toml binauthz_name_pattern)."""
    if pattern.endswith("**"):
        return name.startswith(pattern[:-2])
    if pattern.endswith("*"):
        stem = pattern[:-1]
        return name.startswith(stem) and "/" not in name[len(stem):]
    return name == pattern


def _project_of(policy: dict) -> str | None:
    external = policy.get("spec", {}).get("projectRef", {}).get("external", "")
    return external.removeprefix("projects/") or None


def registry(platform: list[dict]) -> Registry:
    """The registry the rendered gitops/ objects allow; the policy's project is the project."""
    policies = by_kind(platform, _POLICY)
    project = _project_of(policies[0]) if policies else None
    repositories = {
        r.get("spec", {}).get("resourceID") or r["metadata"]["name"]: r.get("spec", {}).get("location", "")
        for r in by_kind(platform, "ArtifactRegistryRepository")
        if r.get("metadata", {}).get("annotations", {}).get("cnrm.cloud.google.com/project-id") == project
    }
    patterns = [
        p.get("namePattern", "") for pol in policies for p in pol.get("spec", {}).get("admissionWhitelistPatterns", [])
    ]
    return Registry(project, repositories, patterns)


def _images(objects: list[dict]) -> Iterator[tuple[dict, dict, Image]]:
    for obj in objects:
        pod = pod_spec(obj)
        for container in containers(pod or {}):
            yield obj, container, parse(container.get("image", ""))


def _where(obj: dict, container: dict) -> str:
    return f"{ref(obj)}: container {container.get('name')} image {container.get('image', '')!r}"


def check_images(objects: list[dict], allowed: Registry) -> list[str]:
    """Every container image pinned by digest, from this project's Artifact Registry or the policy's patterns."""
    problems = []
    for obj, container, image in _images(objects):
        where = _where(obj, container)
        if not _DIGEST.match(image.digest):
            problems.append(f"{where} is not pinned by digest (@sha256: and 64 hex digits); pin it in the "
                            "kustomization's `images:` with `digest:`, never a tag alone")
        # An example-project image is a stand-in (placeholders), not a registry of its own.
        stand_in = bool(_AR_HOST.match(image.host)) and image.path.startswith(f"{EXAMPLE_PROJECT}/")
        if not stand_in and allowed.repository_of(image) is None and not allowed.allows(image):
            problems.append(
                f"{where} is not from this project's Artifact Registry ({allowed.example()}) nor a name the Binary "
                f"Authorization policy allows (gitops/supply-chain/admission.yaml); copy it there ({RUNBOOK_STEP}), "
                "where it is scanned, and pin the copy"
            )
    return problems


def _attestor_name(entry: dict, project: str | None) -> str | None:
    """The attestor a requireAttestationsBy entry names, if it is one of this project's."""
    if "name" in entry:
        return entry["name"]
    owner, _, name = entry.get("external", "").removeprefix("projects/").partition("/attestors/")
    return name if owner == project else None


def _note_name(attestor: dict, project: str | None) -> str | None:
    note = attestor.get("spec", {}).get("userOwnedDrydockNote", {}).get("noteRef", {})
    if "name" in note:
        return note["name"]
    owner, _, name = note.get("external", "").removeprefix("projects/").partition("/notes/")
    return name if owner == project else None


def _rules(policy: dict) -> Iterator[tuple[str, dict]]:
    spec = policy.get("spec", {})
    yield "defaultAdmissionRule", spec.get("defaultAdmissionRule", {})
    for field in _RULES:
        for key, rule in spec.get(field, {}).items():
            yield f"{field}[{key}]", rule


def _attestor_problems(attestor: dict, project: str | None, notes: dict[str, dict]) -> list[str]:
    found = []
    note = _note_name(attestor, project)
    if note not in notes:
        spelled = attestor.get("spec", {}).get("userOwnedDrydockNote", {}).get("noteRef", {})
        found.append(f"{ref(attestor)}: its note {spelled} is not a ContainerAnalysisNote created here "
                     f"({', '.join(sorted(notes)) or 'none'}); its attestations would be under a note nobody writes")
    elif "attestation" not in notes[note].get("spec", {}):
        found.append(f"{ref(attestor)}: its note {ref(notes[note])} is no attestation note (spec.attestation)")
    if not attestor.get("spec", {}).get("userOwnedDrydockNote", {}).get("publicKeys"):
        found.append(f"{ref(attestor)}: no public key, so no attestation ever verifies and every image is refused")
    if _project_of(attestor) != project:
        found.append(f"{ref(attestor)}: in project {_project_of(attestor)}, the policy in {project}")
    return found


def check_admission(objects: list[dict], runbook: Path) -> list[str]:
    """The policy, its attestors and their notes agree; the cluster the runbook makes enforces the policy."""
    policies = by_kind(objects, _POLICY)
    if not policies:
        return []
    if len(policies) > 1:
        return [f"{', '.join(map(ref, policies))}: a project has one Binary Authorization policy; keep one"]
    policy = policies[0]
    project = _project_of(policy)
    attestors = {a["metadata"]["name"]: a for a in by_kind(objects, _ATTESTOR)}
    notes = {n["metadata"]["name"]: n for n in by_kind(objects, _NOTE)}
    found = []
    if policy.get("spec", {}).get("globalPolicyEvaluationMode") != GLOBAL_POLICY:
        found.append(f"{ref(policy)}: globalPolicyEvaluationMode must be {GLOBAL_POLICY}, or GKE's own system "
                     "images need this project's attestation too")
    required: set[str] = set()
    for where, rule in _rules(policy):
        evaluation, enforcement = rule.get("evaluationMode"), rule.get("enforcementMode")
        if evaluation not in EVALUATION_MODES or enforcement not in ENFORCEMENT_MODES.values():
            found.append(f"{ref(policy)}: {where} has evaluationMode {evaluation!r} and enforcementMode "
                         f"{enforcement!r}; known: {', '.join(EVALUATION_MODES)}; "
                         f"{', '.join(ENFORCEMENT_MODES.values())}")
        if where == "defaultAdmissionRule" and evaluation != "REQUIRE_ATTESTATION":
            found.append(f"{ref(policy)}: defaultAdmissionRule evaluationMode is {evaluation!r}: images are admitted "
                         "unattested; require the image gate's attestation (REQUIRE_ATTESTATION)")
        entries = rule.get("requireAttestationsBy", [])
        if evaluation == "REQUIRE_ATTESTATION" and not entries:
            found.append(f"{ref(policy)}: {where} requires attestations but names no attestor")
        for entry in entries:
            name = _attestor_name(entry, project)
            if name not in attestors:
                found.append(f"{ref(policy)}: {where} requires attestor {entry}, which is not a "
                             f"BinaryAuthorizationAttestor created here ({', '.join(sorted(attestors)) or 'none'})")
            else:
                required.add(name)
    for name in sorted(required):
        found += _attestor_problems(attestors[name], project, notes)
    flag = f"--binauthz-evaluation-mode={CLUSTER_MODE}"
    if runbook.is_file() and flag not in runbook.read_text():
        found.append(f"{ref(policy)}: nothing enforces it: the cluster docs/runbook.md creates lacks {flag}")
    return found


def placeholders(objects: list[dict]) -> list[str]:
    """This template's stand-ins that a user replaces before pushing: project, digests, the attestor's key."""
    found = []
    used: dict[str, list[str]] = {}  # image -> the containers that run it, named once per image
    for obj, container, _ in _images(objects):
        used.setdefault(container.get("image", ""), []).append(f"{ref(obj)} {container.get('name')}")
    for reference, where in used.items():
        image = parse(reference)
        stand_ins = [what for what, present in (
            (f"project {EXAMPLE_PROJECT}", image.path.startswith(f"{EXAMPLE_PROJECT}/")),
            ("the all-zero digest", image.digest == PLACEHOLDER_DIGEST)) if present]
        if stand_ins:
            found.append(f"image {reference!r} ({', '.join(where)}): {' and '.join(stand_ins)} ({RUNBOOK_STEP})")
    for obj in objects:
        annotations = obj.get("metadata", {}).get("annotations", {})
        if EXAMPLE_PROJECT in (_project_of(obj), annotations.get("cnrm.cloud.google.com/project-id")):
            found.append(f"{ref(obj)}: project {EXAMPLE_PROJECT}")
        drydock = obj.get("spec", {}).get("userOwnedDrydockNote", {}) if obj.get("kind") == _ATTESTOR else {}
        for key in drydock.get("publicKeys", []):
            if PLACEHOLDER_KEY in key.get("pkixPublicKey", {}).get("publicKeyPem", ""):
                found.append(f"{ref(obj)}: the example public key (gitops/supply-chain/image-gate.pem; {RUNBOOK_STEP})")
    return found


def check(objects: list[dict], platform: list[dict], runbook: Path, before_push: bool) -> tuple[list[str], list[str]]:
    """(problems, placeholders) of one rendered directory; before a push the placeholders are problems too."""
    problems = check_images(objects, registry(platform)) + check_admission(objects, runbook)
    stand_ins = placeholders(objects)
    if before_push:
        return problems + [f"placeholder: {p}" for p in stand_ins], []
    return problems, stand_ins
