"""Gate an image on its vulnerability scan: fail on fixable vulnerabilities at or above the threshold.

Reads On-Demand Scanning's findings for one pushed image (`gcloud artifacts docker images
list-vulnerabilities SCAN --format=json`), the threshold in security/image-gate.toml and the reviewed
allowlist in security/vulnerability-allowlist.toml (tools/policy/vulnerabilities.py decides). Prints
what failed (CVE, package, fixed version), what was allowlisted and until when, and what has no fix
yet (passed, listed). Exits 0 when the image passes, 1 when it fails, 2 when an input cannot be read.
Every image build runs it between the scan and the attestation, so a failing image is never attested.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from policy import vulnerabilities


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from e


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="image_gate.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  gcloud artifacts docker images list-vulnerabilities \"$SCAN\" --location=us --format=json > vulns.json\n"
            "  python tools/image_gate.py --scan vulns.json \\\n"
            "      --image us-docker.pkg.dev/my-project/gke-triton-llm/gateway@sha256:<digest>\n"
            "  python tools/image_gate.py --scan vulns.json --image IMAGE@DIGEST --today 2027-01-15  # on that day\n"
            "\nThe cloudbuild files run it after the scan step; see docs/runbook.md, \"The image gate\"."
        ),
    )
    parser.add_argument("--scan", type=Path, required=True, help="list-vulnerabilities --format=json output")
    parser.add_argument("--image", required=True, help="the scanned image, IMAGE@sha256:DIGEST")
    parser.add_argument("--policy", type=Path, default=vulnerabilities.GATE_FILE, help="image-gate.toml")
    parser.add_argument("--allowlist", type=Path, default=vulnerabilities.ALLOWLIST_FILE, help="allowlist file")
    parser.add_argument("--today", type=_date, default=datetime.date.today(), help="the day expiries are judged on")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        findings = vulnerabilities.read_scan(args.scan)
        mismatch = vulnerabilities.scanned_other_image(findings, args.image)
        if mismatch:
            raise vulnerabilities.ScanError(mismatch)
        policy = vulnerabilities.read_policy(args.policy)
        allowlist, problems = vulnerabilities.read_allowlist(args.allowlist, args.today, policy.allowlist_days)
    except vulnerabilities.ScanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for problem in problems:
        # An entry with a problem allows nothing; the gate says why, tools/validate.py fails on it.
        print(f"warning: {args.allowlist}: {problem}; the entry is ignored", file=sys.stderr)
    decision = vulnerabilities.decide(findings, policy.fail_at, allowlist, args.image, args.today)
    print(vulnerabilities.report(decision, args.image))
    return 0 if decision.passed else 1


if __name__ == "__main__":
    sys.exit(main())
