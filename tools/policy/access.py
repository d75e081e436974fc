"""Least-privilege rules for rendered manifests: Argo CD projects, secrets, network and run-time installs.

Each check takes rendered objects (dicts, as kustomize printed them) and returns problems, each
naming the object (`Kind/name: …`) and what to change. tools/policy/serving.py runs them on every
rendered directory.

Argo CD facts these rules rest on (argoproj/argo-cd at v3.5.1):
  * a project's clusterResourceWhitelist entry matches group, kind and name with Go's
    filepath.Match, and an entry without a name matches every object of its kind
    (pkg/apis/application/v1alpha1/types.go:3856, isNamedResourceInList; `name` is new in 3.5);
  * an empty clusterResourceWhitelist allows no cluster-scoped kind, while an absent
    namespaceResourceWhitelist allows every namespaced one (app_project_types.go:407 and 415);
  * an Application that names no project is in `default`, which every install creates allowing
    everything (docs/user-guide/projects.md, "The Default Project").
"""

from __future__ import annotations

import fnmatch
import re

from .k8s_objects import containers, pod_spec, ref

DEFAULT_PROJECT = "default"
# The only Namespaces this repository creates through Argo CD: one per overlay, triton-<folder>.
NAMESPACE_GLOB = "triton-*"
# The compile Job's namespace (gitops/jobs/compile-engine; tests/test_gitops.py keeps them equal): it
# matches NAMESPACE_GLOB too, and no serving Application may sync into it.
BUILD_NAMESPACE = "triton-build"
WILDCARD = {"group": "*", "kind": "*"}
IAM_GROUP = "iam.cnrm.cloud.google.com"  # Config Connector's IAMPolicy, IAMPolicyMember, IAMServiceAccount, ...
# Names of env vars, Secrets or keys that hold a credential.
_CREDENTIAL = re.compile(r"token|password|passwd|credential|api[-_]?key", re.IGNORECASE)
# A command that fetches software or code at run time. Shell words only, so "pipeline" is no match.
_INSTALL = re.compile(
    r"(?<![\w.-])(pip3?|curl|wget|apt-get|apt|apk|yum|dnf|conda|uv)(?![\w-])|\bgit\s+(clone|fetch|pull)\b"
)


def _group(obj: dict) -> str:
    return obj.get("apiVersion", "").rpartition("/")[0]


def _projects(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o.get("kind") == "AppProject" and _group(o) == "argoproj.io"]


# --- Argo CD projects -------------------------------------------------------------------------


def cluster_resource_permitted(project: dict, group: str, kind: str, name: str) -> bool:
    """Whether project may sync the cluster-scoped object group/kind/name (as Argo CD decides it)."""
    spec = project.get("spec", {})

    def listed(entries: list[dict]) -> bool:
        return any(
            fnmatch.fnmatchcase(kind, e.get("kind", ""))
            and fnmatch.fnmatchcase(group, e.get("group", ""))
            and (not e.get("name") or fnmatch.fnmatchcase(name, e["name"]))
            for e in entries
        )

    return listed(spec.get("clusterResourceWhitelist") or []) and not listed(
        spec.get("clusterResourceBlacklist") or []
    )


def _check_cluster_whitelist(project: dict) -> list[str]:
    """Every cluster-scoped kind a project may create is named; Namespaces only triton-*."""
    problems = []
    for entry in project.get("spec", {}).get("clusterResourceWhitelist") or []:
        what = f"{entry.get('group') or 'core'}/{entry.get('kind')}"
        name = entry.get("name", "")
        if name in ("", "*"):
            problems.append(
                f"{ref(project)}: clusterResourceWhitelist entry {what} has no name, so it allows every "
                f"{entry.get('kind')} in the cluster; name the objects it may create (`name:`, a glob, Argo CD >= 3.5)"
            )
        elif entry.get("kind") == "Namespace" and not name.startswith(NAMESPACE_GLOB[:-1]):
            problems.append(
                f"{ref(project)}: clusterResourceWhitelist allows Namespace {name!r}; this repository creates "
                f"only {NAMESPACE_GLOB} namespaces"
            )
    return problems


def _default_project_holes(spec: dict) -> list[str]:
    """What a `default` project still allows: it must allow nothing."""
    holes = [
        f"{field} {spec[field]!r}"
        for field in ("sourceRepos", "sourceNamespaces", "destinations", "clusterResourceWhitelist")
        if spec.get(field)
    ]
    if WILDCARD not in (spec.get("namespaceResourceBlacklist") or []):
        holes.append('no namespaceResourceBlacklist entry {group: "*", kind: "*"}')
    return holes


def check_default_project(objects: list[dict]) -> list[str]:
    """Where the Argo CD projects are rendered, Argo CD's own `default` project is among them, locked."""
    projects = _projects(objects)
    if not projects:
        return []
    default = next((p for p in projects if p["metadata"].get("name") == DEFAULT_PROJECT), None)
    if default is None:
        return [
            "no AppProject named default: Argo CD creates it allowing every repository, destination and kind, "
            "for any Application that names no project; ship it locked (gitops/argocd/appproject-default.yaml)"
        ]
    holes = _default_project_holes(default.get("spec", {}))
    if holes:
        return [
            f"AppProject/default: must allow nothing, but has {'; '.join(holes)}; empty sourceRepos, "
            'sourceNamespaces, destinations and clusterResourceWhitelist, and blacklist group "*" kind "*"'
        ]
    return []


def destination_namespace_permitted(project: dict, namespace: str) -> bool:
    """Argo CD's namespace match over a project's destinations: a glob, or a `!glob` that denies
    (argo-cd v3.5.1 pkg/apis/application/v1alpha1/app_project_types.go:446-532, isDestinationMatched)."""
    permitted = False
    for entry in project.get("spec", {}).get("destinations") or []:
        pattern = entry.get("namespace", "")
        if pattern.startswith("!"):
            if fnmatch.fnmatchcase(namespace, pattern[1:]):
                return False
        elif pattern == "*" or fnmatch.fnmatchcase(namespace, pattern):
            permitted = True
    return permitted


def _check_build_namespace(project: dict) -> list[str]:
    """No project lets an Application into the compile Job's namespace: kubectl applies the Job there."""
    if destination_namespace_permitted(project, BUILD_NAMESPACE):
        return [
            f"{ref(project)}: its destinations let an Application sync into {BUILD_NAMESPACE}, the compile Job's "
            f"namespace (an overlays/build/ folder would take it over: labels, NetworkPolicy, prune); add a "
            f'destination with namespace "!{BUILD_NAMESPACE}"'
        ]
    return []


def check_projects(objects: list[dict]) -> list[str]:
    return [
        p for project in _projects(objects) for p in _check_cluster_whitelist(project) + _check_build_namespace(project)
    ] + check_default_project(objects)


# --- pods: credentials, run-time installs, Job network ---------------------------------------------


def check_credential_env(objects: list[dict]) -> list[str]:
    """A token never travels in an env var: mount its Secret as a file and name the file instead."""
    problems = []
    for obj in objects:
        for container in containers(pod_spec(obj) or {}):
            for env in container.get("env", []):
                secret = env.get("valueFrom", {}).get("secretKeyRef")
                if secret is None:
                    continue
                names = (env.get("name", ""), secret.get("name", ""), secret.get("key", ""))
                if any(_CREDENTIAL.search(n) for n in names):
                    problems.append(
                        f"{ref(obj)}: container {container.get('name')} reads Secret {secret.get('name')} key "
                        f"{secret.get('key')} into env var {env.get('name')}; env vars end up in logs, crash "
                        "reports and child processes, so mount the Secret as a volume and pass the file's path "
                        "(HF_TOKEN_PATH for Hugging Face)"
                    )
    return problems


def _jobs(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o.get("kind") in ("Job", "CronJob")]


def check_job_installs(objects: list[dict]) -> list[str]:
    """A Job runs what its image holds: nothing fetched from the internet when it starts."""
    problems = []
    for job in _jobs(objects):
        for container in containers(pod_spec(job) or {}):
            words = " ".join(str(w) for w in [*container.get("command", []), *container.get("args", [])])
            match = _INSTALL.search(words)
            if match:
                problems.append(
                    f"{ref(job)}: container {container.get('name')} runs {match.group(0)!r}, fetching software at "
                    "run time; put what it needs into its image (gitops/jobs/compile-engine/Dockerfile)"
                )
    return problems


def _isolates(policy: dict) -> bool:
    """Selects every pod of its namespace and restricts both directions."""
    spec = policy.get("spec", {})
    return spec.get("podSelector") in ({}, None) and {"Ingress", "Egress"} <= set(spec.get("policyTypes", []))


def check_job_network(objects: list[dict]) -> list[str]:
    """A Job's namespace has a NetworkPolicy that denies all ingress and all but the egress it allows."""
    isolated = {
        p.get("metadata", {}).get("namespace")
        for p in objects
        if p.get("kind") == "NetworkPolicy" and _isolates(p)
    }
    return [
        f"{ref(job)}: namespace {job.get('metadata', {}).get('namespace')!r} has no NetworkPolicy selecting every "
        "pod (podSelector: {}) with policyTypes Ingress and Egress; ship one that allows only the egress the "
        "Job needs (gitops/jobs/compile-engine/networkpolicy.yaml)"
        for job in _jobs(objects)
        if job.get("metadata", {}).get("namespace") not in isolated
    ]


# --- IAM through git ----------------------------------------------------------------------------


def _iam_kind(group: str, kind: str) -> bool:
    return fnmatch.fnmatchcase(IAM_GROUP, group) and (kind == "*" or kind.startswith("IAM"))


def check_no_iam_in_git(objects: list[dict]) -> list[str]:
    """No Config Connector IAM object is rendered, and no project lets Argo CD sync one.

    To apply them, Config Connector needs roles/resourcemanager.projectIamAdmin, which may grant any
    role on the project, owner included (tools/policy/gke_facts.toml project_iam_admin_grants_any_role):
    a push to git would be a path to owner. Identities and their grants are made with gcloud instead."""
    problems = [
        f"{ref(obj)}: an IAM object in git lets a push grant roles: Config Connector would need project IAM admin "
        "to apply it, which grants any role (owner included); create the account and its roles with gcloud "
        "(docs/runbook.md step 2) and name it by email"
        for obj in objects if _group(obj) == IAM_GROUP
    ]
    for project in _projects(objects):
        whitelist = project.get("spec", {}).get("namespaceResourceWhitelist")
        for entry in whitelist or []:
            if _iam_kind(entry.get("group", ""), entry.get("kind", "")):
                problems.append(
                    f"{ref(project)}: namespaceResourceWhitelist allows {entry.get('group')}/{entry.get('kind')}, so "
                    "a push could grant any role on the project through Config Connector; list the kinds it syncs "
                    "without the IAM ones"
                )
    return problems


def check(objects: list[dict]) -> list[str]:
    return (
        check_projects(objects)
        + check_no_iam_in_git(objects)
        + check_credential_env(objects)
        + check_job_installs(objects)
        + check_job_network(objects)
    )
