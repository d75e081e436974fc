"""tools/validate.py's image rules (tools/policy/images.py): every image an overlay or Job runs is pinned by
digest and comes from this project's Artifact Registry or a name the Binary Authorization policy allows;
the policy, its attestor and their note agree; the template's stand-ins pass by default, named, and
`--before-push` refuses them. Each test breaks a scratch copy (the `repo` fixture) the way a person would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import validate
import yaml
from policy import images

ROOT = Path(__file__).resolve().parent.parent
CRDS = validate.VENDORED_CRDS
ZERO = "sha256:" + "0" * 64
REAL = "sha256:" + "ab" * 32
GATEWAY = "us-docker.pkg.dev/example-project/gke-triton-llm/gateway"
TRITON_COPY = "us-docker.pkg.dev/example-project/nvcr/nvidia/tritonserver"
COMPILE = "us-docker.pkg.dev/example-project/gke-triton-llm/compile-engine"
KEY = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE{}\n-----END PUBLIC KEY-----\n".format("A" * 88)


def edit(repo: Path, relative: str, old: str, new: str) -> None:
    path = repo / relative
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {relative}"
    path.write_text(text.replace(old, new))


def result(repo: Path, directory: str, before_push: bool = False) -> validate.Result:
    [found] = validate.validate(repo, CRDS, [repo / directory], before_push)
    return found


def problems(repo: Path, directory: str, before_push: bool = False) -> list[str]:
    return result(repo, directory, before_push).problems


def pin_gateway(repo: Path, overlay: str, image: str) -> None:
    """What docs/runbook.md step 8 appends to an overlay: the pushed gateway image by digest."""
    name, _, digest = image.partition("@")
    path = repo / overlay / "kustomization.yaml"
    path.write_text(path.read_text() + f"images:\n  - name: {GATEWAY}\n    newName: {name}\n    digest: {digest}\n")


def test_every_overlay_and_the_compile_job_pass_and_name_their_stand_ins(repo: Path) -> None:
    results = {r.directory.relative_to(repo).as_posix(): r for r in validate.validate(repo, CRDS)}
    assert all(r.problems == [] for r in results.values())
    for overlay in ("overlays/cpu", "overlays/l4", "overlays/a100-80gb", "overlays/h100", "overlays/h200"):
        assert results[overlay].placeholders == (
            f"image '{TRITON_COPY}@{ZERO}' (Deployment/triton fetch-model, Deployment/triton triton): project "
            "example-project and the all-zero digest (docs/runbook.md steps 3b, 8)",
            f"image '{GATEWAY}@{ZERO}' (Deployment/triton gateway): project example-project and the all-zero digest "
            "(docs/runbook.md steps 3b, 8)",
        )
    assert results["gitops/jobs/compile-engine"].placeholders == (
        f"image '{COMPILE}@{ZERO}' (Job/compile-engine compile): project example-project and the all-zero digest "
        "(docs/runbook.md steps 3b, 8)",
    )
    assert "BinaryAuthorizationAttestor/image-gate: the example public key (gitops/supply-chain/image-gate.pem; " \
        "docs/runbook.md steps 3b, 8)" in results["gitops/supply-chain"].placeholders


def test_before_push_refuses_the_stand_ins_naming_each_image(repo: Path) -> None:
    assert problems(repo, "overlays/cpu", before_push=True) == [
        f"placeholder: image '{TRITON_COPY}@{ZERO}' (Deployment/triton fetch-model, Deployment/triton triton): "
        "project example-project and the all-zero digest (docs/runbook.md steps 3b, 8)",
        f"placeholder: image '{GATEWAY}@{ZERO}' (Deployment/triton gateway): project example-project and the "
        "all-zero digest (docs/runbook.md steps 3b, 8)",
    ]
    supply = problems(repo, "gitops/supply-chain", before_push=True)
    assert "placeholder: BinaryAuthorizationPolicy/project-policy: project example-project" in supply
    # A base keeps its examples: the overlays that deploy it replace them, and are refused while they do not.
    assert problems(repo, "gitops/base", before_push=True) == []


def test_before_push_passes_once_every_stand_in_is_replaced(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/runbook.md step 3b: the project, the key, the Triton copy's digest (build/versions.toml is read
    # from this checkout, so its digest is patched where the validator reads it); step 8: the gateway.
    edit(repo, "gitops/supply-chain/project.yaml", "project: example-project", "project: my-project")
    edit(repo, "gitops/supply-chain/project.yaml", "projects/example-project", "projects/my-project")
    (repo / "gitops/supply-chain/image-gate.pem").write_text(KEY)
    edit(repo, "gitops/base/kustomization.yaml", f"example-project/nvcr/nvidia/tritonserver\n    digest: {ZERO}",
         f"my-project/nvcr/nvidia/tritonserver\n    digest: {REAL}")
    monkeypatch.setattr(images, "triton_digest", lambda: REAL)
    pin_gateway(repo, "overlays/cpu", f"us-docker.pkg.dev/my-project/gke-triton-llm/gateway@{REAL}")
    assert problems(repo, "overlays/cpu", before_push=True) == []
    assert result(repo, "gitops/supply-chain", before_push=True) == validate.Result(
        repo / "gitops/supply-chain", [], 9)


def test_an_image_by_tag_alone_in_the_compile_job(repo: Path) -> None:
    edit(repo, "gitops/jobs/compile-engine/kustomization.yaml", f"digest: {ZERO}", "newTag: 0123456789ab")
    assert problems(repo, "gitops/jobs/compile-engine") == [
        f"Job/compile-engine: container compile image '{COMPILE}:0123456789ab' is not pinned by digest (@sha256: and "
        "64 hex digits); pin it in the kustomization's `images:` with `digest:`, never a tag alone"
    ]


def test_an_image_from_a_foreign_registry(repo: Path) -> None:
    pin_gateway(repo, "overlays/cpu", f"ghcr.io/acme/gateway@{REAL}")
    assert problems(repo, "overlays/cpu") == [
        f"Deployment/triton: container gateway image 'ghcr.io/acme/gateway@{REAL}' is not from this project's "
        "Artifact Registry (us-docker.pkg.dev/example-project/gke-triton-llm/…, "
        "us-docker.pkg.dev/example-project/nvcr/…) nor a name the Binary Authorization policy allows "
        "(gitops/supply-chain/admission.yaml); copy it there (docs/runbook.md steps 3b, 8), where it is scanned, "
        "and pin the copy"
    ]


def test_a_repository_in_another_location_than_the_image_says(repo: Path) -> None:
    edit(repo, "gitops/supply-chain/project.yaml", "project: example-project", "project: my-project")
    edit(repo, "gitops/supply-chain/project.yaml", "projects/example-project", "projects/my-project")
    edit(repo, "gitops/base/kustomization.yaml", "example-project/nvcr/", "my-project/nvcr/")
    edit(repo, "gitops/supply-chain/repositories.yaml", "  name: nvcr\n  namespace: gke-platform\n  annotations:\n"
         "    cnrm.cloud.google.com/deletion-policy: abandon\nspec:\n  location: us\n",
         "  name: nvcr\n  namespace: gke-platform\n  annotations:\n"
         "    cnrm.cloud.google.com/deletion-policy: abandon\nspec:\n  location: europe\n")
    copy = f"us-docker.pkg.dev/my-project/nvcr/nvidia/tritonserver@{ZERO}"
    assert problems(repo, "gitops/base") == [
        f"Deployment/triton: container {name} image '{copy}' is not from this project's Artifact Registry "
        "(us-docker.pkg.dev/my-project/gke-triton-llm/…, europe-docker.pkg.dev/my-project/nvcr/…) nor a name the "
        "Binary Authorization policy allows (gitops/supply-chain/admission.yaml); copy it there (docs/runbook.md "
        "steps 3b, 8), where it is scanned, and pin the copy"
        for name in ("fetch-model", "triton")
    ]


def test_an_image_the_policy_allows_by_name(repo: Path) -> None:
    pin_gateway(repo, "overlays/cpu", f"ghcr.io/acme/gateway@{REAL}")
    edit(repo, "gitops/supply-chain/admission.yaml", "  admissionWhitelistPatterns:\n",
         "  admissionWhitelistPatterns:\n    - namePattern: ghcr.io/acme/*\n")
    assert problems(repo, "overlays/cpu") == []


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("gcr.io/nginx*", "gcr.io/nginx", True),
    ("gcr.io/nginx*", "gcr.io/nginx-alpine", True),
    ("gcr.io/nginx*", "gcr.io/nginx/image", False),
    ("gcr.io/nginx**", "gcr.io/nginx/image", True),
    ("quay.io/argoproj/argocd:v3.5.1", "quay.io/argoproj/argocd:v3.5.1", True),
    ("quay.io/argoproj/argocd:v3.5.1", "quay.io/argoproj/argocd:v3.5.2", False),
])
def test_allowlist_patterns_match_as_binary_authorization_documents(pattern: str, name: str, matches: bool) -> None:
    # image_facts.toml binauthz_name_pattern: a trailing * stops at "/", a trailing ** does not.
    assert images.pattern_matches(pattern, name) is matches


def test_a_policy_that_names_an_attestor_nobody_creates(repo: Path) -> None:
    edit(repo, "gitops/supply-chain/admission.yaml", "    requireAttestationsBy:\n      - name: image-gate\n",
         "    requireAttestationsBy:\n      - name: built-by-cloud-build\n")
    assert problems(repo, "gitops/supply-chain") == [
        "BinaryAuthorizationPolicy/project-policy: defaultAdmissionRule requires attestor {'name': "
        "'built-by-cloud-build'}, which is not a BinaryAuthorizationAttestor created here (image-gate)"
    ]


def test_an_attestor_whose_note_is_not_the_one_created(repo: Path) -> None:
    edit(repo, "gitops/supply-chain/admission.yaml", "    noteRef:\n      name: image-gate\n",
         "    noteRef:\n      external: projects/example-project/notes/scanned\n")
    assert problems(repo, "gitops/supply-chain") == [
        "BinaryAuthorizationAttestor/image-gate: its note {'external': 'projects/example-project/notes/scanned'} is "
        "not a ContainerAnalysisNote created here (image-gate); its attestations would be under a note nobody writes"
    ]


def test_a_policy_that_admits_everything_or_needs_attestations_for_system_images(repo: Path) -> None:
    edit(repo, "gitops/supply-chain/admission.yaml", "evaluationMode: REQUIRE_ATTESTATION",
         "evaluationMode: ALWAYS_ALLOW")
    edit(repo, "gitops/supply-chain/admission.yaml", "globalPolicyEvaluationMode: ENABLE",
         "globalPolicyEvaluationMode: DISABLE")
    edit(repo, "gitops/supply-chain/admission.yaml", "enforcementMode: DRYRUN_AUDIT_LOG_ONLY",
         "enforcementMode: DRY_RUN")
    assert problems(repo, "gitops/supply-chain") == [
        "BinaryAuthorizationPolicy/project-policy: globalPolicyEvaluationMode must be ENABLE, or GKE's own system "
        "images need this project's attestation too",
        "BinaryAuthorizationPolicy/project-policy: defaultAdmissionRule has evaluationMode 'ALWAYS_ALLOW' and "
        "enforcementMode 'DRY_RUN'; known: ALWAYS_ALLOW, ALWAYS_DENY, REQUIRE_ATTESTATION; "
        "ENFORCED_BLOCK_AND_AUDIT_LOG, DRYRUN_AUDIT_LOG_ONLY",
        "BinaryAuthorizationPolicy/project-policy: defaultAdmissionRule evaluationMode is 'ALWAYS_ALLOW': images are "
        "admitted unattested; require the image gate's attestation (REQUIRE_ATTESTATION)",
    ]


def test_a_cluster_that_does_not_enforce_the_policy(repo: Path) -> None:
    edit(repo, "docs/runbook.md", "  --binauthz-evaluation-mode=PROJECT_SINGLETON_POLICY_ENFORCE \\\n", "")
    assert problems(repo, "gitops/supply-chain") == [
        "BinaryAuthorizationPolicy/project-policy: nothing enforces it: the cluster docs/runbook.md creates lacks "
        "--binauthz-evaluation-mode=PROJECT_SINGLETON_POLICY_ENFORCE"
    ]


def test_cli_before_push_exits_1_and_default_passes(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    assert validate.main(["--repo", str(repo), "--crds", str(CRDS), "gitops/jobs/compile-engine"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "The placeholders above are this template's stand-ins: replace them (docs/runbook.md steps 3b, 8); "
        "tools/validate.py --before-push refuses them.")
    assert validate.main(["--repo", str(repo), "--crds", str(CRDS), "--before-push", "overlays/cpu"]) == 1
    assert f"   - placeholder: image '{GATEWAY}@{ZERO}'" in capsys.readouterr().out


def test_the_recorded_facts_match_the_vendored_crds() -> None:
    def spec(kind: str) -> dict:
        crd = yaml.safe_load(next(CRDS.glob(f"*/{kind}.yaml")).read_text())
        return crd["spec"]["versions"][-1]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]

    docker = spec("ArtifactRegistryRepository")["remoteRepositoryConfig"]["properties"]["dockerRepository"]
    assert sorted(docker["properties"]) == images.FACTS["kcc_remote_repository"]["value"]
    rule = spec("BinaryAuthorizationPolicy")["defaultAdmissionRule"]["properties"]
    assert rule["evaluationMode"]["description"].endswith(": " + ", ".join(images.EVALUATION_MODES))
    assert all(mode in rule["enforcementMode"]["description"] for mode in images.ENFORCEMENT_MODES.values())
    assert images.GLOBAL_POLICY in spec("BinaryAuthorizationPolicy")["globalPolicyEvaluationMode"]["description"]
    assert "evaluationMode" in spec("ContainerCluster")["binaryAuthorization"]["properties"]


def runbook_section(title: str, until: str) -> str:
    """The bash blocks of docs/runbook.md from the heading `title` to the next `until`, one script."""
    runbook = (ROOT / "docs/runbook.md").read_text()
    section = runbook[runbook.index(title):runbook.index(until, runbook.index(title) + len(title))]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, re.S))


def test_the_runbooks_step_3b_as_written_leaves_only_the_gateway_to_step_8(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/runbook.md step 3b on a copy: its one sed (the project), the key gcloud writes, and the Triton
    # lines (the copy's name from build/versions.toml, then tools/pin_image.py with the digest the gated
    # mirror build printed), run as written. No hand edit of a digest is left in it.
    script = runbook_section("## 3b.", "\n## ")
    seds = re.findall(r"^sed -i .*?(?<!\\)$", script, re.M | re.S)
    assert len(seds) == 1 and "gitops/supply-chain/project.yaml" in seds[0], seds
    starts = ("TRITON=", "TRITON_COPY=", ".venv/bin/python tools/pin_image.py")
    triton = [line for line in script.splitlines() if line.startswith(starts)]
    assert len(triton) == 3, triton
    (repo / "build").mkdir()
    (repo / "build/versions.toml").write_text((ROOT / "build/versions.toml").read_text())
    env = {**os.environ, "PROJECT_ID": "my-project", "TRITON_DIGEST": REAL}
    commands = [*seds, "\n".join(triton).replace(".venv/bin/python tools/", f"{sys.executable} {ROOT}/tools/")]
    for command in commands:
        subprocess.run(["bash", "-ceu", command], cwd=repo, env=env, check=True, capture_output=True)
    (repo / "gitops/supply-chain/image-gate.pem").write_text(KEY)
    digest = tomllib.loads((repo / "build/versions.toml").read_text())["triton"]["digest"]
    monkeypatch.setattr(images, "triton_digest", lambda: digest)
    assert digest == REAL
    assert problems(repo, "gitops/supply-chain", before_push=True) == []
    assert problems(repo, "overlays/cpu", before_push=True) == [
        f"placeholder: image '{GATEWAY}@{ZERO}' (Deployment/triton gateway): project example-project and the "
        "all-zero digest (docs/runbook.md steps 3b, 8)"
    ]


def test_the_runbooks_continuous_validation_policy_requires_the_admission_attestors_key(repo: Path) -> None:
    # docs/runbook.md step 13 writes the platform policy from the attestor's key file and the project, as
    # step 3b left them; run as written, it must name what the rendered attestor names.
    script = runbook_section("### Continuous validation", "\n## ")
    writer = script[script.index("KEY_ID="):script.index("gcloud beta container binauthz policy create")]
    edit(repo, "gitops/supply-chain/project.yaml", "project: example-project", "project: my-project")
    edit(repo, "gitops/supply-chain/project.yaml", "projects/example-project", "projects/my-project")
    (repo / "gitops/supply-chain/image-gate.pem").write_text(KEY)
    env = {**os.environ, "PROJECT_ID": "my-project", "TARGET": "cpu", "COMPILE_NAMESPACE": "triton-build"}
    subprocess.run(["bash", "-ceu", writer.replace("/tmp/image-gate-cv.yaml", "cv.yaml")], cwd=repo, env=env,
                   check=True)
    policy = yaml.safe_load((repo / "cv.yaml").read_text())
    rendered = validate.render(repo / "gitops/supply-chain")
    [attestor] = [o for o in rendered if o["kind"] == "BinaryAuthorizationAttestor"]
    [admission] = [o for o in rendered if o["kind"] == "BinaryAuthorizationPolicy"]
    [key] = attestor["spec"]["userOwnedDrydockNote"]["publicKeys"]
    required = admission["spec"]["defaultAdmissionRule"]["requireAttestationsBy"]
    assert required == [{"name": attestor["metadata"]["name"]}]
    *scoped, catch_all = policy["gkePolicy"]["checkSets"]
    assert [s["scope"]["kubernetesNamespace"] for s in scoped] == ["triton-cpu", "triton-build"]
    assert "scope" not in catch_all and catch_all["checks"] == []  # the facts: the last set has no scope
    for check_set in scoped:
        [check] = check_set["checks"]
        signing = check["simpleSigningAttestationCheck"]
        assert signing["containerAnalysisAttestationProjects"] == [admission["spec"]["projectRef"]["external"]]
        [authenticator] = signing["attestationAuthenticators"]
        [pkix] = authenticator["pkixPublicKeySet"]["pkixPublicKeys"]
        assert pkix == {"keyId": key["id"], "signatureAlgorithm": key["pkixPublicKey"]["signatureAlgorithm"],
                        "publicKeyPem": key["pkixPublicKey"]["publicKeyPem"]}
    facts = images.FACTS["cv_platform_policy"]["value"]
    assert key["pkixPublicKey"]["signatureAlgorithm"] in facts["signature_algorithms"]

    def fields(node: object) -> set[str]:
        if isinstance(node, dict):
            return set(node).union(*(fields(v) for v in node.values()))
        return set().union(*(fields(v) for v in node)) if isinstance(node, list) else set()

    assert fields(policy) <= set(facts["fields"])


def test_the_runbook_binds_the_platform_policy_with_the_recorded_mode() -> None:
    script = runbook_section("### Continuous validation", "\n## ")
    recorded = images.FACTS["cv_evaluation_mode"]["value"]
    assert f"--binauthz-evaluation-mode={recorded['mode']}" in script
    binding = recorded["binding"].format(project="${PROJECT_ID}", policy="image-gate")
    assert f"--binauthz-policy-bindings=name={binding}" in script
    assert "gcloud beta container binauthz policy create image-gate --platform=gke" in script
