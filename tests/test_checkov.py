"""A second opinion on the manifests: checkov's Kubernetes checks on everything we render.

Each overlay and the Argo CD, compile Job and node pool kustomizations are rendered with kustomize
(as tools/validate.py renders them) into one folder, and checkov scans that folder once, offline.
Every failure must be named in tools/policy/checkov-skips.yaml, with its reason; every entry there must
still name a failure. checkov runs from its own virtual environment (`make checkov`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
SKIPS = ROOT / "tools" / "policy" / "checkov-skips.yaml"
CHECKOV = Path(os.environ.get("GKE_TRITON_CHECKOV", ROOT / ".venv-checkov" / "bin" / "checkov"))
TARGETS = [
    *[d.relative_to(ROOT).as_posix() for d in validate.kustomization_dirs(ROOT) if d.parent == ROOT / "overlays"],
    "gitops/argocd",
    "gitops/jobs/compile-engine",
    # Config Connector kinds: checkov has no checks for them today, so these scan nothing yet.
    "gitops/nodepools",
    "gitops/supply-chain",
]
# No network: no update check (checkov/common/util/banner.py runs it on import unless this is
# set), no platform download of policies or their metadata, no API key so nothing is uploaded.
OFFLINE = {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}


@dataclass(frozen=True)
class Failure:
    check: str
    name: str
    resource: str
    target: str

    def __str__(self) -> str:
        return f"{self.check} ({self.name}) on {self.resource} in {self.target}"


def file_name(target: str) -> str:
    return target.replace("/", "__") + ".yaml"


def render_all(folder: Path) -> None:
    for target in TARGETS:
        documents = validate.render(ROOT / target)
        (folder / file_name(target)).write_text(yaml.safe_dump_all(documents, sort_keys=False))


def scan(folder: Path) -> dict:
    """checkov's JSON report for folder, offline."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder / "home"), **OFFLINE}
    done = subprocess.run(
        [str(CHECKOV), "--directory", str(folder / "rendered"), "--framework", "kubernetes", "--skip-download",
         "--output", "json", "--compact"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    # checkov exits 1 when a check fails, which is what this test sorts out.
    assert done.returncode in (0, 1), done.stderr[-4000:]
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not CHECKOV.is_file():
        pytest.fail(f"checkov is not installed at {CHECKOV}: run `make checkov` (or set GKE_TRITON_CHECKOV)")
    folder = tmp_path_factory.mktemp("checkov")
    (folder / "rendered").mkdir()
    render_all(folder / "rendered")
    return scan(folder)


def target_of(path: str) -> str:
    return next(t for t in TARGETS if Path(path).name == file_name(t))


def failures(report: dict) -> list[Failure]:
    return [
        Failure(c["check_id"], c["check_name"], c["resource"], target_of(c["file_path"]))
        for c in report["results"].get("failed_checks", [])
    ]


def entries() -> list[dict]:
    listed = yaml.safe_load(SKIPS.read_text())
    return [{**e, "kind": kind} for kind in ("skips", "pending") for e in listed.get(kind) or []]


def covers(entry: dict, failure: Failure) -> bool:
    return entry["check"] == failure.check and any(fnmatch.fnmatchcase(failure.resource, r) for r in entry["resources"])


def test_every_entry_says_why() -> None:
    for entry in entries():
        assert entry.get("reason", "").strip() and entry.get("resources"), entry


def test_checkov_ran_on_every_target_offline_without_parse_errors(report: dict) -> None:
    assert report["summary"]["parsing_errors"] == 0
    results = report["results"]
    scanned = {target_of(c["file_path"]) for k in ("passed_checks", "failed_checks") for c in results.get(k, [])}
    assert {t for t in TARGETS if t not in ("gitops/nodepools", "gitops/supply-chain")} <= scanned


def test_every_failing_check_is_listed_with_its_reason(report: dict) -> None:
    unlisted = [str(f) for f in failures(report) if not any(covers(e, f) for e in entries())]
    assert unlisted == [], (
        "checkov checks fail that tools/policy/checkov-skips.yaml does not list; fix the manifest, or list the check "
        "with why it is wrong here:\n  " + "\n  ".join(unlisted)
    )


def test_every_listed_check_still_fails_somewhere(report: dict) -> None:
    found = failures(report)
    stale = [f"{e['kind']}: {e['check']} {e['resources']}" for e in entries() if not any(covers(e, f) for f in found)]
    assert stale == [], "these tools/policy/checkov-skips.yaml entries match no failure any more; remove them:\n  " + (
        "\n  ".join(stale)
    )
