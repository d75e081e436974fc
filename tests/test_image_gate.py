"""The image gate (tools/image_gate.py) on scan output in On-Demand Scanning's documented format, and
tools/validate.py's allowlist check.

The scans in tests/fixtures/scans/ are written in the format `gcloud artifacts docker images
list-vulnerabilities --format=json` prints (Grafeas occurrences: tools/policy/scan_facts.toml records
the fields and their sources); no scan runs here, there is no Artifact Registry.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import image_gate
import pytest
import validate
from policy import vulnerabilities

ROOT = Path(__file__).resolve().parent.parent
SCANS = ROOT / "tests" / "fixtures" / "scans"
FIXABLE_CRITICAL = SCANS / "gateway-fixable-critical.json"
ALLOWLISTED_HIGH = SCANS / "gateway-allowlisted-high.json"
IMAGE = "us-docker.pkg.dev/my-project/gke-triton-llm/gateway@sha256:" + "4f" * 32
TODAY = "2027-01-15"
ENTRY = """
[[allow]]
cve = "CVE-2026-20001"
image = "{image}"
reason = "libexpat1 is parsed only by pip at build time; Debian's fix is in the next point release"
owner = "platform-team@example.com"
expires = 2027-01-31
"""


def gate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = image_gate.main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def allowlist(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vulnerability-allowlist.toml"
    path.write_text(text)
    return path


def threshold(tmp_path: Path, level: str) -> Path:
    path = tmp_path / "image-gate.toml"
    path.write_text(f'fail_at = "{level}"\nallowlist_days = 90\n')
    return path


def test_a_fixable_critical_fails_the_image_naming_cve_package_fixed_version_and_image(capsys) -> None:
    code, out, _ = gate(capsys, "--scan", str(FIXABLE_CRITICAL), "--image", IMAGE, "--today", TODAY)
    assert code == 1
    assert f"image gate: {IMAGE}" in out
    assert "FAILED: 1 fixable at or above HIGH" in out
    assert "CRITICAL CVE-2026-10001  openssl 3.0.15-1~deb12u1, fixed in 3.0.17-1~deb12u2" in out
    assert out.rstrip().endswith("FAILED: the image is not attested; fix the packages above or allowlist them")


def test_an_unfixable_critical_passes_and_is_reported(capsys, tmp_path: Path) -> None:
    entries = allowlist(tmp_path, ENTRY.format(image="gateway"))
    code, out, _ = gate(
        capsys, "--scan", str(ALLOWLISTED_HIGH), "--image", IMAGE, "--allowlist", str(entries), "--today", TODAY
    )
    assert code == 0, out
    unfixable = "unfixable: 1 at or above HIGH, passed (no fix exists yet):\n"
    unfixable += "  CRITICAL CVE-2026-10002  glibc 2.36-9+deb12u9\n"
    assert unfixable in out
    assert "below HIGH: 1, not gated" in out  # the fixable MEDIUM in tar
    assert out.rstrip().endswith("PASSED")


@pytest.mark.parametrize(
    "today, passes", [("2027-01-15", True), ("2027-01-31", True), ("2027-02-01", False)]
)
def test_an_allowlisted_vulnerability_passes_until_its_entry_expires(capsys, tmp_path: Path, today, passes) -> None:
    entries = allowlist(tmp_path, ENTRY.format(image="gateway"))
    code, out, err = gate(
        capsys, "--scan", str(ALLOWLISTED_HIGH), "--image", IMAGE, "--allowlist", str(entries), "--today", today
    )
    if passes:
        assert code == 0, out
        assert (
            "allowlisted: 1 (security/vulnerability-allowlist.toml):\n  HIGH     CVE-2026-20001  libexpat1 "
            "2.5.0-1+deb12u1, fixed in 2.5.0-1+deb12u2; allowed until 2027-01-31, owner platform-team@example.com"
        ) in out
    else:
        assert code == 1
        assert "HIGH     CVE-2026-20001  libexpat1 2.5.0-1+deb12u1, fixed in 2.5.0-1+deb12u2" in out
        assert "entry 1 (CVE-2026-20001) expired on 2027-01-31" in err


def test_an_allowlist_entry_holds_only_for_its_image(capsys, tmp_path: Path) -> None:
    entries = allowlist(tmp_path, ENTRY.format(image="tritonserver"))
    code, out, _ = gate(
        capsys, "--scan", str(ALLOWLISTED_HIGH), "--image", IMAGE, "--allowlist", str(entries), "--today", TODAY
    )
    assert code == 1
    assert "FAILED: 1 fixable at or above HIGH" in out and "CVE-2026-20001" in out


@pytest.mark.parametrize(
    "level, fixture, code, failed",
    [
        ("CRITICAL", ALLOWLISTED_HIGH, 0, []),  # the fixable HIGH is under the threshold
        ("CRITICAL", FIXABLE_CRITICAL, 1, ["CVE-2026-10001"]),
        ("MEDIUM", FIXABLE_CRITICAL, 1, ["CVE-2026-10001", "CVE-2026-10003"]),
        ("MEDIUM", ALLOWLISTED_HIGH, 1, ["CVE-2026-20001", "CVE-2026-10003"]),
    ],
)
def test_the_threshold_comes_from_the_policy_file(capsys, tmp_path: Path, level, fixture, code, failed) -> None:
    policy = threshold(tmp_path, level)
    result, out, _ = gate(capsys, "--scan", str(fixture), "--image", IMAGE, "--policy", str(policy), "--today", TODAY)
    assert result == code, out
    section = out.split("FAILED: ", 1)[1].split("\nunfixable", 1)[0] if failed else ""
    assert [cve for cve in ("CVE-2026-10001", "CVE-2026-10003", "CVE-2026-20001") if cve in section] == sorted(failed)


def test_the_shipped_threshold_is_read_from_security_image_gate_toml() -> None:
    with (ROOT / "security" / "image-gate.toml").open("rb") as f:
        shipped = tomllib.load(f)
    assert vulnerabilities.read_policy() == vulnerabilities.Policy(shipped["fail_at"], shipped["allowlist_days"])
    assert shipped["fail_at"] == "HIGH"
    assert vulnerabilities.GATE_FILE == ROOT / "security" / "image-gate.toml"


def test_a_threshold_that_is_no_severity_is_refused_by_name(capsys, tmp_path: Path) -> None:
    code, _, err = gate(capsys, "--scan", str(FIXABLE_CRITICAL), "--image", IMAGE,
                        "--policy", str(threshold(tmp_path, "SEVERE")))
    assert code == 2
    assert "fail_at must be one of MINIMAL, LOW, MEDIUM, HIGH, CRITICAL, not 'SEVERE'" in err


def test_the_rest_responses_occurrences_object_is_read_like_gclouds_list(tmp_path: Path) -> None:
    listed = json.loads(FIXABLE_CRITICAL.read_text())
    wrapped = tmp_path / "rest.json"
    wrapped.write_text(json.dumps({"occurrences": listed}))
    assert vulnerabilities.read_scan(wrapped) == vulnerabilities.read_scan(FIXABLE_CRITICAL)
    # the PACKAGE occurrence in the list is not a finding
    assert [f.cve for f in vulnerabilities.read_scan(FIXABLE_CRITICAL)] == [
        "CVE-2026-10001", "CVE-2026-10002", "CVE-2026-10003"]


def test_a_package_issues_own_severity_decides(tmp_path: Path) -> None:
    [occurrence] = json.loads(FIXABLE_CRITICAL.read_text())[:1]
    occurrence["vulnerability"]["packageIssue"][0]["effectiveSeverity"] = "LOW"  # the distro rates it lower
    [finding] = vulnerabilities.parse_scan([occurrence])
    assert finding.severity == "LOW"
    del occurrence["vulnerability"]["packageIssue"][0]["fixAvailable"]
    occurrence["vulnerability"]["packageIssue"][0]["fixedVersion"] = {"kind": "MAXIMUM"}
    assert vulnerabilities.parse_scan([occurrence])[0].fixable is False


def test_a_scan_of_another_digest_is_refused(capsys) -> None:
    other = IMAGE.replace("4f" * 32, "ab" * 32)
    code, _, err = gate(capsys, "--scan", str(FIXABLE_CRITICAL), "--image", other)
    assert code == 2
    assert f"the scan is of https://{IMAGE}, not of {other}" in err


def test_a_tag_is_refused_the_gate_judges_a_digest(capsys) -> None:
    code, _, err = gate(capsys, "--scan", str(FIXABLE_CRITICAL), "--image", "us-docker.pkg.dev/p/r/gateway:v1")
    assert code == 2 and "has no digest" in err


def test_output_that_is_not_a_scan_is_refused_naming_the_format(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "scan.json"
    bad.write_text(json.dumps({"name": "projects/p/locations/us/operations/1", "done": True}))
    code, _, err = gate(capsys, "--scan", str(bad), "--image", IMAGE)
    assert code == 2
    assert "list-vulnerabilities SCAN --format=json" in err


def test_the_command_runs_on_its_own_as_the_build_step_runs_it() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "image_gate.py"), "--scan", str(FIXABLE_CRITICAL), "--image", IMAGE],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 1, done.stderr
    assert "CVE-2026-10001" in done.stdout


def test_the_severities_are_grafeas_order() -> None:
    assert vulnerabilities.severities() == ["MINIMAL", "LOW", "MEDIUM", "HIGH", "CRITICAL"]


# tools/validate.py: the allowlist's entries must each have an owner and an expiry, and none be past it.
def _validate(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "security").mkdir(exist_ok=True)
    (tmp_path / "security" / "vulnerability-allowlist.toml").write_text(text)
    (tmp_path / "security" / "image-gate.toml").write_text((ROOT / "security" / "image-gate.toml").read_text())
    [result] = validate.validate(tmp_path, None)  # no manifests in this scratch root: the allowlist alone
    assert result.directory == tmp_path / "security" / "vulnerability-allowlist.toml"
    return result.problems


def test_the_shipped_allowlist_validates() -> None:
    assert vulnerabilities.check_allowlist(vulnerabilities.ALLOWLIST_FILE) == ([], 0)


def test_a_valid_entry_passes_validation(tmp_path: Path) -> None:
    future = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()
    assert _validate(tmp_path, ENTRY.format(image="gateway").replace("2027-01-31", future)) == []


@pytest.mark.parametrize(
    "old, new, problem",
    [
        ('owner = "platform-team@example.com"\n', "", "entry 1 (CVE-2026-20001) has no owner"),
        ("expires = SOON\n", "", "entry 1 (CVE-2026-20001) has no expires"),
        ("SOON", "2020-01-31",
         "entry 1 (CVE-2026-20001) expired on 2020-01-31: fix the image, "
         "or review the entry again and set a new expiry"),
        ("SOON", "FAR",
         "entry 1 (CVE-2026-20001) expires on FAR, more than 90 days ahead (image-gate.toml allowlist_days): "
         "set an earlier expiry and review it again then"),
        ("SOON", '"soon"',
         "entry 1 (CVE-2026-20001): expires must be a date (expires = 2027-01-31), not 'soon'"),
        ('owner = "platform-team@example.com"', 'owner = "platform-team@example.com"\nreviewer = "x"',
         "entry 1 (CVE-2026-20001) has an unknown field reviewer"),
    ],
)
def test_validate_refuses_an_entry_without_owner_or_expiry_past_it_or_too_far_ahead(tmp_path: Path, old, new, problem):
    today = datetime.date.today()
    dates = {"SOON": (today + datetime.timedelta(days=30)).isoformat(),
             "FAR": (today + datetime.timedelta(days=91)).isoformat()}
    text = ENTRY.format(image="gateway").replace("2027-01-31", "SOON")
    assert old in text
    text = text.replace(old, new)
    for token, date in dates.items():
        text, problem = text.replace(token, date), problem.replace(token, date)
    assert _validate(tmp_path, text) == [problem]


def test_validate_prints_the_allowlist_problem(tmp_path: Path, capsys) -> None:
    _validate(tmp_path, ENTRY.format(image="gateway").replace("2027-01-31", "2020-01-31"))
    assert validate.main(["--repo", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "❌ " in out and "vulnerability-allowlist.toml" in out and "expired on 2020-01-31" in out
