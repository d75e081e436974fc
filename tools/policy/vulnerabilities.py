"""The image gate's decision: which vulnerabilities of a scanned image fail its build.

Reads On-Demand Scanning's output (Grafeas occurrences, scan_facts.toml records the format), the
project's threshold (security/image-gate.toml) and its reviewed allowlist
(security/vulnerability-allowlist.toml). A vulnerability fails the image when a fix exists for its
package and its severity is at or above the threshold, unless an allowlist entry for that CVE and
image has not expired. Unfixable ones pass and are reported: nothing can be done about them but
watch. tools/image_gate.py runs this in every image build; tools/validate.py checks the allowlist.

Only the standard library: the build runs it in a plain Python image.
"""

from __future__ import annotations

import datetime
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FACTS = Path(__file__).resolve().parent / "scan_facts.toml"
GATE_FILE = REPO / "security" / "image-gate.toml"
ALLOWLIST_FILE = REPO / "security" / "vulnerability-allowlist.toml"
ALLOWLIST_FIELDS = ("cve", "image", "reason", "owner", "expires")
NO_FIX_KIND = "MAXIMUM"


class ScanError(Exception):
    """The scan output, the threshold or the allowlist cannot be read; the message says which and why."""


def severities() -> list[str]:
    """Grafeas' severities, lowest first (scan_facts.toml)."""
    with FACTS.open("rb") as f:
        return tomllib.load(f)["severities"]["value"]


@dataclass(frozen=True)
class Finding:
    """One vulnerable package of one image, as the scan reports it."""

    cve: str
    package: str
    installed: str
    fixed: str  # the fixed version, "" when there is none
    severity: str
    fixable: bool
    image: str  # the scanned resource, as the scan names it


@dataclass(frozen=True)
class AllowEntry:
    cve: str
    image: str
    reason: str
    owner: str
    expires: datetime.date


@dataclass(frozen=True)
class Decision:
    failed: list[Finding]
    unfixable: list[Finding]  # at or above the threshold, passed, reported
    allowed: list[tuple[Finding, AllowEntry]]
    below: list[Finding]  # under the threshold, counted only
    threshold: str

    @property
    def passed(self) -> bool:
        return not self.failed


def _version(version: dict | None) -> str:
    if not version or version.get("kind") == NO_FIX_KIND:
        return ""
    return version.get("fullName") or version.get("name", "")


def _severity(issue: dict, vulnerability: dict, known: list[str]) -> str:
    # The package issue's own effective severity first: one occurrence's issues can differ.
    ranked = (issue.get("effectiveSeverity"), vulnerability.get("effectiveSeverity"), vulnerability.get("severity"))
    for value in ranked:
        if value in known:
            return value
    return "SEVERITY_UNSPECIFIED"


def _fixable(issue: dict) -> bool:
    if "fixAvailable" in issue:
        return bool(issue["fixAvailable"])
    return bool(_version(issue.get("fixedVersion")))


def _occurrences(document: object, source: str) -> list[dict]:
    if isinstance(document, dict) and set(document) <= {"occurrences"}:
        occurrences = document.get("occurrences", [])  # the REST response; {} when nothing was found
        if isinstance(occurrences, list):
            return occurrences
    if isinstance(document, dict) and "nextPageToken" in document:
        raise ScanError(f"{source}: one page of a paged response (nextPageToken): list every page, as gcloud does")
    if isinstance(document, list):
        return document
    raise ScanError(
        f"{source}: not scan output: expected the JSON list `gcloud artifacts docker images "
        "list-vulnerabilities SCAN --format=json` prints, or an object with `occurrences`"
    )


def parse_scan(document: object, source: str = "scan") -> list[Finding]:
    """Every vulnerable package in scan output (list-vulnerabilities --format=json, or {"occurrences": [...]})."""
    known = severities()
    findings = []
    for index, occurrence in enumerate(_occurrences(document, source)):
        if not isinstance(occurrence, dict) or occurrence.get("kind") != "VULNERABILITY":
            continue
        vulnerability = occurrence.get("vulnerability")
        note = occurrence.get("noteName", "")
        if not isinstance(vulnerability, dict) or not note:
            raise ScanError(f"{source}: occurrence {index} is a VULNERABILITY without `vulnerability` or `noteName`")
        issues = vulnerability.get("packageIssue") or []
        if not issues:
            raise ScanError(f"{source}: occurrence {index} ({note}) names no packageIssue")
        for issue in issues:
            findings.append(
                Finding(
                    cve=note.rsplit("/", 1)[-1],
                    package=issue.get("affectedPackage", "?"),
                    installed=_version(issue.get("affectedVersion")),
                    fixed=_version(issue.get("fixedVersion")),
                    severity=_severity(issue, vulnerability, known),
                    fixable=_fixable(issue),
                    image=occurrence.get("resourceUri", ""),
                )
            )
    return findings


def read_scan(path: Path) -> list[Finding]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ScanError(f"{path} does not exist; the scan step writes it (list-vulnerabilities --format=json)") from e
    except json.JSONDecodeError as e:
        raise ScanError(f"{path} is not JSON ({e}); the scan step must use --format=json") from e
    return parse_scan(document, str(path))


def scanned_other_image(findings: list[Finding], image: str) -> str | None:
    """Why the findings are not the scan of `image` (another digest's resourceUri), or None."""
    if "@" not in image:
        return f"--image {image} has no digest: the gate judges one pushed digest (IMAGE@sha256:...)"
    digest = image.rsplit("@", 1)[1]
    other = next((f.image for f in findings if f.image and not f.image.endswith(f"@{digest}")), None)
    if other:
        return f"the scan is of {other}, not of {image}: scan the digest that is gated and attested"
    return None


def _load_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ScanError(f"{path} does not exist") from e
    except tomllib.TOMLDecodeError as e:
        raise ScanError(f"{path} is not valid TOML: {e}") from e


@dataclass(frozen=True)
class Policy:
    fail_at: str  # the lowest severity at which a fixable vulnerability fails an image
    allowlist_days: int  # how far ahead an allowlist entry may expire


def read_policy(path: Path = GATE_FILE) -> Policy:
    """security/image-gate.toml: the threshold and the longest an exception may be granted for."""
    document = _load_toml(path)
    value, days = document.get("fail_at"), document.get("allowlist_days")
    known = severities()
    if value not in known:
        raise ScanError(f"{path}: fail_at must be one of {', '.join(known)}, not {value!r}")
    if not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise ScanError(f"{path}: allowlist_days must be a whole number of days, at least 1, not {days!r}")
    return Policy(value, days)


def image_name(reference: str) -> str:
    """An image's name as the allowlist names it: the last part of its path, without tag or digest
    (us-docker.pkg.dev/p/r/gateway@sha256:… -> gateway), so one entry holds in every project."""
    path = reference.removeprefix("https://").split("@", 1)[0]
    last = path.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def entry_problems(entry: object, index: int, today: datetime.date, allowlist_days: int) -> list[str]:
    """What is wrong with one allowlist entry: a missing field, a date that is not one, an expiry past
    or further ahead than the policy's allowlist_days."""
    where = f"entry {index + 1}"
    if not isinstance(entry, dict):
        return [f"{where} is not a table ([[allow]])"]
    if entry.get("cve"):
        where += f" ({entry['cve']})"
    problems = [f"{where} has no {field}" for field in ALLOWLIST_FIELDS if entry.get(field) in (None, "")]
    problems += [f"{where} has an unknown field {field}" for field in sorted(set(entry) - set(ALLOWLIST_FIELDS))]
    expires = entry.get("expires")
    is_date = isinstance(expires, datetime.date) and not isinstance(expires, datetime.datetime)
    if expires not in (None, "") and not is_date:
        problems.append(f"{where}: expires must be a date (expires = 2027-01-31), not {expires!r}")
    elif isinstance(expires, datetime.date) and expires < today:
        problems.append(
            f"{where} expired on {expires.isoformat()}: fix the image, or review the entry again and set a new expiry"
        )
    elif isinstance(expires, datetime.date) and (expires - today).days > allowlist_days:
        problems.append(
            f"{where} expires on {expires.isoformat()}, more than {allowlist_days} days ahead "
            "(image-gate.toml allowlist_days): set an earlier expiry and review it again then"
        )
    return problems


def read_allowlist(path: Path, today: datetime.date, allowlist_days: int) -> tuple[list[AllowEntry], list[str]]:
    """The allowlist's entries and its problems (entries with problems are left out: they allow nothing)."""
    document = _load_toml(path)
    unknown = sorted(set(document) - {"allow"})
    problems = [f"unknown top-level key {key}: entries are [[allow]] tables" for key in unknown]
    raw = document.get("allow", [])
    if not isinstance(raw, list):
        return [], [*problems, "allow must be an array of tables ([[allow]])"]
    entries = []
    for index, entry in enumerate(raw):
        found = entry_problems(entry, index, today, allowlist_days)
        problems += found
        if not found:
            entries.append(AllowEntry(**{field: entry[field] for field in ALLOWLIST_FIELDS}))
    return entries, problems


def check_allowlist(path: Path, today: datetime.date | None = None) -> tuple[list[str], int]:
    """tools/validate.py's check: the allowlist's problems (an entry without owner or expiry, past it
    or too far ahead, an unreadable file) and how many entries it has. The policy is image-gate.toml
    beside it."""
    try:
        document = _load_toml(path)
        policy = read_policy(path.parent / GATE_FILE.name)
        _, problems = read_allowlist(path, today or datetime.date.today(), policy.allowlist_days)
    except ScanError as e:
        return [str(e)], 0
    entries = document.get("allow", [])
    return problems, len(entries) if isinstance(entries, list) else 0


def decide(
    findings: list[Finding], threshold: str, allowlist: list[AllowEntry], image: str, today: datetime.date
) -> Decision:
    """Sort findings into failed, unfixable, allowlisted and below the threshold, for `image`."""
    order = {name: rank for rank, name in enumerate(severities())}
    floor = order[threshold]
    name = image_name(image)
    failed, unfixable, allowed, below = [], [], [], []
    for finding in findings:
        if order.get(finding.severity, -1) < floor:
            below.append(finding)
        elif not finding.fixable:
            unfixable.append(finding)
        else:
            entry = next(
                (e for e in allowlist if e.cve == finding.cve and e.image == name and e.expires >= today), None
            )
            if entry is None:
                failed.append(finding)
            else:
                allowed.append((finding, entry))
    return Decision(failed, unfixable, allowed, below, threshold)


def _line(finding: Finding) -> str:
    fixed = f", fixed in {finding.fixed}" if finding.fixed else ""
    return f"{finding.severity:<8} {finding.cve}  {finding.package} {finding.installed}{fixed}"


def report(decision: Decision, image: str) -> str:
    """The gate's report, as the build log shows it."""
    lines = [f"image gate: {image}", f"threshold: fixable vulnerabilities at or above {decision.threshold} fail"]
    if decision.failed:
        lines.append(f"FAILED: {len(decision.failed)} fixable at or above {decision.threshold} (upgrade the package):")
        lines += [f"  {_line(f)}" for f in decision.failed]
    if decision.allowed:
        lines.append(f"allowlisted: {len(decision.allowed)} (security/vulnerability-allowlist.toml):")
        lines += [
            f"  {_line(f)}; allowed until {e.expires.isoformat()}, owner {e.owner}: {e.reason}"
            for f, e in decision.allowed
        ]
    if decision.unfixable:
        count = len(decision.unfixable)
        lines.append(f"unfixable: {count} at or above {decision.threshold}, passed (no fix exists yet):")
        lines += [f"  {_line(f)}" for f in decision.unfixable]
    lines.append(f"below {decision.threshold}: {len(decision.below)}, not gated")
    failed = "FAILED: the image is not attested; fix the packages above or allowlist them"
    lines.append("PASSED" if decision.passed else failed)
    return "\n".join(lines)
