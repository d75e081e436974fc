"""tools/policy/access.py: least privilege that holds. Argo CD projects name the cluster-scoped objects
they may create, Argo CD's `default` project allows nothing, and the compile Job reads its token from
a file, runs in an isolated namespace and installs nothing when it starts.

Broken-copy tests like tests/test_validate.py: copy the manifests, break one thing, assert the exact
problems tools/validate.py reports.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import validate
import yaml
from packaging.requirements import Requirement
from policy import access
from test_validate import edit, problems  # CRDs found as tests/test_validate.py finds them

ROOT = Path(__file__).resolve().parent.parent

SERVING = "gitops/argocd/appproject-serving.yaml"
JOB = "gitops/jobs/compile-engine"


def test_namespace_whitelisted_without_a_name(repo: Path) -> None:
    edit(repo, SERVING, "      name: triton-*\n", "")
    assert problems(repo, "gitops/argocd") == [
        "AppProject/triton-serving: clusterResourceWhitelist entry core/Namespace has no name, so it allows every "
        "Namespace in the cluster; name the objects it may create (`name:`, a glob, Argo CD >= 3.5)"
    ]


def test_namespace_whitelisted_outside_triton(repo: Path) -> None:
    edit(repo, SERVING, "      name: triton-*\n", "      name: kube-*\n")
    assert problems(repo, "gitops/argocd") == [
        "AppProject/triton-serving: clusterResourceWhitelist allows Namespace 'kube-*'; this repository creates "
        "only triton-* namespaces"
    ]


def test_overlay_namespace_the_project_does_not_name(repo: Path) -> None:
    edit(repo, SERVING, "      name: triton-*\n", "      name: triton-h100\n")
    assert problems(repo, "overlays/cpu") == [
        "Namespace/triton-cpu: AppProject/triton-serving does not allow this Namespace "
        "(clusterResourceWhitelist, by name); Argo CD would refuse to sync it"
    ]


def test_any_cluster_scoped_kind_needs_a_name(repo: Path) -> None:
    edit(repo, "gitops/argocd/appproject-platform.yaml", "      name: triton-*\n",
         "      name: triton-*\n    - group: rbac.authorization.k8s.io\n      kind: ClusterRole\n"
         "      name: '*'\n")
    assert problems(repo, "gitops/argocd") == [
        "AppProject/triton-platform: clusterResourceWhitelist entry rbac.authorization.k8s.io/ClusterRole has no "
        "name, so it allows every ClusterRole in the cluster; name the objects it may create (`name:`, a glob, "
        "Argo CD >= 3.5)"
    ]


def test_default_project_missing(repo: Path) -> None:
    edit(repo, "gitops/argocd/kustomization.yaml", "  - appproject-default.yaml\n", "")
    assert problems(repo, "gitops/argocd") == [
        "no AppProject named default: Argo CD creates it allowing every repository, destination and kind, for any "
        "Application that names no project; ship it locked (gitops/argocd/appproject-default.yaml)"
    ]


def test_default_project_left_permissive(repo: Path) -> None:
    path = "gitops/argocd/appproject-default.yaml"
    edit(repo, path, "  sourceRepos: []\n", "  sourceRepos: ['*']\n")
    edit(repo, path, "  namespaceResourceBlacklist:\n    - group: \"*\"\n      kind: \"*\"\n", "")
    assert problems(repo, "gitops/argocd") == [
        "AppProject/default: must allow nothing, but has sourceRepos ['*']; no namespaceResourceBlacklist entry "
        '{group: "*", kind: "*"}; empty sourceRepos, sourceNamespaces, destinations and clusterResourceWhitelist, '
        'and blacklist group "*" kind "*"'
    ]


def test_token_in_an_env_var(repo: Path) -> None:
    edit(repo, f"{JOB}/job.yaml", "            - name: HF_TOKEN_PATH\n",
         "            - name: HF_TOKEN\n              valueFrom:\n                secretKeyRef:\n"
         "                  name: hf-token\n                  key: token\n            - name: HF_TOKEN_PATH\n")
    assert problems(repo, JOB) == [
        "Job/compile-engine: container compile reads Secret hf-token key token into env var HF_TOKEN; env vars end "
        "up in logs, crash reports and child processes, so mount the Secret as a volume and pass the file's path "
        "(HF_TOKEN_PATH for Hugging Face)"
    ]


def test_job_namespace_without_a_network_policy(repo: Path) -> None:
    edit(repo, f"{JOB}/kustomization.yaml", "  - networkpolicy.yaml\n", "")
    assert problems(repo, JOB) == [
        "Job/compile-engine: namespace 'triton-build' has no NetworkPolicy selecting every pod (podSelector: {}) "
        "with policyTypes Ingress and Egress; ship one that allows only the egress the Job needs "
        "(gitops/jobs/compile-engine/networkpolicy.yaml)"
    ]


def test_job_network_policy_that_leaves_egress_open(repo: Path) -> None:
    edit(repo, f"{JOB}/networkpolicy.yaml", "    - Egress\n", "")
    [problem] = problems(repo, JOB)
    assert problem.startswith("Job/compile-engine: namespace 'triton-build' has no NetworkPolicy selecting every pod")


@pytest.mark.parametrize("command", [
    'python3 -m pip install --user rich && exec python3 build/compile.py',
    'curl -fsSL https://example.com/x.sh | bash',
    'git clone https://github.com/example/gke-triton-llm.git /work/src',
])
def test_job_that_installs_at_run_time(repo: Path, command: str) -> None:
    edit(repo, f"{JOB}/job.yaml", '            - exec python3 build/compile.py',
         f"            - {command}; exec python3 build/compile.py")
    word = command.split()[2] if command.startswith("python3") else " ".join(command.split()[:2])
    word = "curl" if word.startswith("curl") else word
    assert problems(repo, JOB) == [
        f"Job/compile-engine: container compile runs {word!r}, fetching software at run time; put what it needs "
        "into its image (gitops/jobs/compile-engine/Dockerfile)"
    ]


def test_words_that_merely_contain_pip_are_fine() -> None:
    job = {"kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [
        {"name": "c", "command": ["python3", "tools/pipeline.py", "--recipe", "/opt/pip-tools/x"]}]}}}}
    assert access.check_job_installs([job]) == []


def project(whitelist: list[dict], blacklist: list[dict] | None = None) -> dict:
    return {"spec": {"clusterResourceWhitelist": whitelist, "clusterResourceBlacklist": blacklist or []}}


@pytest.mark.parametrize(("entries", "name", "allowed"), [
    ([], "triton-cpu", False),  # an empty whitelist allows no cluster-scoped kind
    ([{"group": "", "kind": "Namespace"}], "kube-system", True),  # no name: every Namespace
    ([{"group": "", "kind": "Namespace", "name": "triton-*"}], "triton-cpu", True),
    ([{"group": "", "kind": "Namespace", "name": "triton-*"}], "kube-system", False),
    ([{"group": "*", "kind": "*", "name": "triton-?pu"}], "triton-cpu", True),
])
def test_cluster_whitelist_matches_like_argo_cd(entries: list[dict], name: str, allowed: bool) -> None:
    assert access.cluster_resource_permitted(project(entries), "", "Namespace", name) is allowed


def test_blacklist_wins_over_whitelist() -> None:
    locked = project([{"group": "", "kind": "Namespace", "name": "triton-*"}],
                     [{"group": "", "kind": "Namespace", "name": "triton-build"}])
    assert not access.cluster_resource_permitted(locked, "", "Namespace", "triton-build")


def test_the_shipped_default_project_is_argo_cds_locked_one() -> None:
    default = yaml.safe_load((ROOT / "gitops/argocd/appproject-default.yaml").read_text())
    assert default["metadata"]["name"] == "default"
    assert access.check_default_project([default]) == []


def test_compile_job_reads_the_token_from_the_mounted_secret() -> None:
    [job] = [o for o in validate.render(ROOT / JOB) if o["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    [compile_container] = pod["containers"]
    env = {e["name"]: e for e in compile_container["env"]}
    assert "HF_TOKEN" not in env and all("valueFrom" not in e for e in env.values())
    [secret] = [v for v in pod["volumes"] if "secret" in v]
    assert secret["secret"]["secretName"] == "hf-token" and secret["secret"]["optional"] is True
    [mount] = [m for m in compile_container["volumeMounts"] if m["name"] == secret["name"]]
    [item] = secret["secret"]["items"]
    assert env["HF_TOKEN_PATH"]["value"] == f"{mount['mountPath']}/{item['path']}" and mount["readOnly"] is True


def test_compile_image_carries_what_compile_py_imports_beyond_the_triton_image() -> None:
    dockerfile = (ROOT / JOB / "Dockerfile").read_text()
    for source in ("build/", "model_repository/", "tools/publish.py"):
        assert f"COPY {source} " in dockerfile
    pins = [Requirement(line) for line in (ROOT / JOB / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    declared = {Requirement(d).name: Requirement(d) for d in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for pin in pins:
        (version,) = [s.version for s in pin.specifier]
        assert declared[pin.name].specifier.contains(version), pin
