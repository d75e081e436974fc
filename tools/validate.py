"""Validate every kustomization in this repository the way Argo CD will render it, before a push.

Renders each overlay in overlays/ and each kustomization under gitops/ with plain `kustomize build`
(or `kubectl kustomize`), then checks every object:
  * schema, strictly: built-in kinds against Kubernetes' own schemas, custom resources against
    their CRDs (unknown fields, kinds and apiVersions fail) -- tools/policy/kubeschema.py;
  * policy: GPU selector, count and requests against build/gpus.toml, the image against
    build/versions.toml, probes, non-root, TLS-only Ingress with authentication, NetworkPolicy,
    autoscaling, node pool machine types, Argo CD project limits -- tools/policy/serving.py;
  * alerts: severity, summary, runbook section and a numeric threshold for every alert of the
    Rules objects; the Cloud Monitoring dashboard's structure and namespace scoping --
    tools/policy/monitoring.py;
  * the pin gate: the build in model-pin.yaml must be for the overlay's GPU and image, and its
    tp × pp the GPUs the overlay requests -- tools/policy/pin_gate.py, the gate tools/pin.py applies too;
  * images: every container pinned by digest, from this project's Artifact Registry or a name the
    Binary Authorization policy allows; policy, attestor and note agree -- tools/policy/images.py.
    The template's stand-ins (example-project, all-zero digests, the example key) are listed and
    pass; --before-push refuses them.
Prints ✅ or ❌ per directory with every problem, and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "build"))

import yaml  # noqa: E402
from policy import capacity, images, k8s_objects, kubeschema, monitoring, serving, vulnerabilities  # noqa: E402

CRDS_ENV = "GKE_TRITON_CRDS"
# Upstream CRDs at pinned releases; tools/policy/crds/sources.toml says which, tools/update_crds.py refreshes them.
VENDORED_CRDS = Path(__file__).resolve().parent / "policy" / "crds"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# Bases whose example images every overlay, or every engine-build overlay build/runtimes/engine.py
# prints, replaces by digest: --before-push refuses placeholders where they are deployed, not here.
IMAGE_BASES = ("gitops/base", "gitops/jobs/compile-engine")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ToolError(Exception):
    """The validator itself cannot run (no kustomize, unreadable CRDs): never a pass."""


class RenderError(Exception):
    """kustomize refused a directory."""


@dataclass(frozen=True)
class Result:
    directory: Path
    problems: list[str]
    objects: int
    # Stand-ins of the template a user replaces before pushing (tools/policy/images.py placeholders).
    placeholders: tuple[str, ...] = ()


def kustomize_command() -> list[str]:
    """`kustomize build` if installed, else the kustomize built into kubectl."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    raise ToolError("neither kustomize nor kubectl is on PATH: install kubectl (it includes kustomize) or kustomize v5")


def render(directory: Path) -> list[dict]:
    """The objects kustomize renders for directory, exactly as Argo CD would (no extra flags)."""
    done = subprocess.run([*kustomize_command(), str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RenderError(done.stderr.strip() or f"kustomize exited with {done.returncode}")
    return [obj for obj in yaml.load_all(done.stdout, Loader=_LOADER) if obj]


def _kustomization(directory: Path) -> Path | None:
    return next((directory / f for f in KUSTOMIZATION_FILES if (directory / f).is_file()), None)


def _is_component(kustomization: Path) -> bool:
    return (yaml.safe_load(kustomization.read_text()) or {}).get("kind") == "Component"


def kustomization_dirs(root: Path) -> list[Path]:
    """Every overlay, then every buildable kustomization under gitops/ (components build only inside one)."""
    overlays = sorted(d for d in (root / "overlays").glob("*") if d.is_dir() and _kustomization(d))
    gitops = sorted(
        {
            k.parent
            for name in KUSTOMIZATION_FILES
            for k in (root / "gitops").rglob(name)
            if not _is_component(k)
        }
    )
    return overlays + gitops


def crd_directory(flag: str | None) -> Path:
    """--crds, else $GKE_TRITON_CRDS, else the upstream CRDs vendored in tools/policy/crds."""
    chosen = flag or os.environ.get(CRDS_ENV)
    return Path(chosen) if chosen else VENDORED_CRDS


def is_serving(directory: Path, root: Path) -> bool:
    return directory.parent == root / "overlays" or (directory / serving.PIN_FILE).is_file()


def _substitute(template: str, relative: str) -> str | None:
    value = template.replace("{{.path.basename}}", Path(relative).name).replace("{{.path.path}}", relative)
    return None if "{{" in value else value


def serving_context(directory: Path, root: Path, platform: list[dict]) -> serving.ServingContext:
    """Where the repository's ApplicationSet sends this overlay, under which AppProject, and the node pools."""
    # The generator matches paths relative to the repository root, like overlays/h100.
    resolved, base = directory.resolve(), root.resolve()
    relative = resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else directory.as_posix()
    namespace = project = application = None
    for appset in (o for o in platform if o.get("kind") == "ApplicationSet"):
        spec = appset.get("spec", {})
        patterns = [
            d.get("path", "")
            for g in spec.get("generators", [])
            for d in g.get("git", {}).get("directories", [])
            if not d.get("exclude")
        ]
        if any(fnmatch.fnmatch(relative, p) for p in patterns):
            application = appset
            template = spec.get("template", {}).get("spec", {})
            namespace = _substitute(template.get("destination", {}).get("namespace", ""), relative)
            project = next(
                (
                    o
                    for o in platform
                    if o.get("kind") == "AppProject" and o["metadata"].get("name") == template.get("project")
                ),
                None,
            )
    pools = [o for o in platform if o.get("kind") == "ContainerNodePool"]
    classes = [o for o in platform if o.get("kind") == "ComputeClass"]
    return serving.ServingContext(
        namespace=namespace, project=project, node_pools=pools or None, compute_classes=classes,
        application=application, runbook=root / "docs" / "runbook.md",
    )


def check_directory(
    directory: Path, objects: list[dict], root: Path, crds: kubeschema.CrdSet | None, platform: list[dict]
) -> list[str]:
    """Every problem of one rendered directory: schema, policy everywhere, and serving policy for overlays."""
    problems = []
    for obj in objects:
        problems += [f"{k8s_objects.ref(obj)}: {p}" for p in kubeschema.validate_object(obj, crds)]
    problems += serving.check_everywhere(objects)
    problems += capacity.check_jobs(objects, platform) + capacity.check_job_disruptions(objects)
    thresholds = monitoring.read_thresholds(directory / monitoring.THRESHOLDS_FILE)
    problems += monitoring.check_rules(objects, root / "docs" / "runbook.md", thresholds)
    if is_serving(directory, root):
        context = serving_context(directory, root, platform)
        problems += serving.check_serving(objects, directory / serving.PIN_FILE, context)
        problems += monitoring.check_serving(objects)
    return problems


def _render_or_error(directory: Path) -> list[dict] | RenderError:
    try:
        return render(directory)
    except RenderError as error:
        return error


def validate(
    root: Path, crds_dir: Path | None, directories: list[Path] | None = None, before_push: bool = False
) -> list[Result]:
    """Render and check directories (default: all of root's); the Argo CD objects and node pools
    under root/gitops are rendered in any case, as the context the overlays are checked against."""
    crds = kubeschema.load_crds(crds_dir) if crds_dir is not None else None
    every = kustomization_dirs(root)
    wanted = directories if directories is not None else every
    context_dirs = [d for d in every if d.is_relative_to(root / "gitops")]
    # kustomize runs are independent processes: render them side by side.
    needed = list(dict.fromkeys([*context_dirs, *wanted]))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        rendered = dict(zip(needed, pool.map(_render_or_error, needed), strict=True))
    platform = [obj for d in context_dirs if isinstance(rendered[d], list) for obj in rendered[d]]
    results = []
    for directory in wanted:
        objects = rendered[directory]
        if isinstance(objects, RenderError):
            results.append(Result(directory, [f"kustomize failed: {objects}"], 0))
        else:
            problems = check_directory(directory, objects, root, crds, platform)
            # The bases' stand-in images are replaced in what is deployed (each overlay's and each run's
            # `images:`), and refused there: a base keeps its example.
            strict = before_push and directory.resolve() not in {(root / b).resolve() for b in IMAGE_BASES}
            found, stand_ins = images.check(objects, platform, root / "docs" / "runbook.md", strict)
            results.append(Result(directory, problems + found, len(objects), tuple(stand_ins)))
    dashboard = root / monitoring.DASHBOARD.relative_to(monitoring.REPO)
    if directories is None and dashboard.is_file():
        # Not a kustomization: the runbook creates it with gcloud; checked with everything.
        results.append(Result(dashboard, monitoring.check_dashboard(dashboard), 1))
    allowlist = root / vulnerabilities.ALLOWLIST_FILE.relative_to(vulnerabilities.REPO)
    if directories is None and allowlist.is_file():
        # The image gate's reviewed exceptions: an owner and an expiry each, none past it.
        results.append(Result(allowlist, *vulnerabilities.check_allowlist(allowlist)))
    return results


def _shown(directory: Path) -> str:
    try:
        return directory.resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python tools/validate.py                      # every overlay and gitops/ kustomization\n"
            "  python tools/validate.py overlays/h100        # one overlay\n"
            "  python tools/validate.py --before-push        # also refuse the template's placeholders\n"
            "  python tools/validate.py --crds ~/my-cluster-crds   # CRDs of your cluster:\n"
            "      kubectl get crd podmonitorings.monitoring.googleapis.com -o yaml > ~/my-cluster-crds/pm.yaml\n"
            f"CRDs come from --crds, else ${CRDS_ENV}, else tools/policy/crds (tools/policy/crds/sources.toml)."
        ),
    )
    parser.add_argument("paths", nargs="*", type=Path, help="kustomization directories (default: all)")
    parser.add_argument("--crds", metavar="DIR", help="directory of CustomResourceDefinition YAML")
    parser.add_argument("--repo", type=Path, default=REPO, help="repository root (default: this checkout)")
    parser.add_argument("--before-push", action="store_true",
                        help="refuse the template's placeholders (example-project, all-zero digests, example key)")
    args = parser.parse_args(argv)

    root = args.repo.resolve()
    crds_dir = crd_directory(args.crds)
    try:
        print(f"CRD schemas from {_shown(crds_dir)} ({len(kubeschema.load_crds(crds_dir).kinds)} kinds)")
        results = validate(root, crds_dir, [p.resolve() for p in args.paths] or None, args.before_push)
    except (ToolError, kubeschema.CrdError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for result in results:
        if result.problems:
            print(f"❌ {_shown(result.directory)}")
            for problem in result.problems:
                print(f"   - {problem}")
        else:
            print(f"✅ {_shown(result.directory)} ({result.objects} objects)")
        for placeholder in result.placeholders:
            print(f"   · placeholder: {placeholder}")
    failed = sum(1 for r in results if r.problems)
    print(f"{len(results)} director{'y' if len(results) == 1 else 'ies'}, {failed} failed")
    if any(r.placeholders for r in results):
        print("The placeholders above are this template's stand-ins: replace them (docs/runbook.md steps 3b, 8); "
              "tools/validate.py --before-push refuses them.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
