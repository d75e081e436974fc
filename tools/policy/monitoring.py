"""Policy for the alerts (GMP Rules) and the Cloud Monitoring dashboard: what their schemas cannot say.

The Rules CRD accepts any string as an expression or annotation; these checks hold each alert to
what on-call needs: a severity, a summary naming the Deployment, a runbook_url whose section exists,
and, where its `threshold` label names a key of the overlay's alert-thresholds.yaml, that key's
number after the expression's last " > " (kustomize replacements copy it there).

The PodMonitoring must scrape both of the pod's metrics: Triton's port and the gateway's /metrics,
at one interval, and the NetworkPolicy must let Managed Prometheus (namespace gmp-system) reach
every port it scrapes.

The dashboard is JSON for `gcloud monitoring dashboards create`, which no CRD describes: its
structure is checked against the facts of Google's Dashboard API reference (a mosaicLayout of at
most 48 columns, one widget kind per tile, PromQL datasets), and every query is scoped to the
namespace the dashboard filter picks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from . import gateway
from .k8s_objects import by_kind, pod_spec, ref

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = REPO / "docs" / "runbook.md"
DASHBOARD = REPO / "gitops" / "components" / "monitoring" / "dashboard.json"
DEPLOYMENT = "triton"
SEVERITIES = ("critical", "warning")
THRESHOLD_DELIMITER = " > "
THRESHOLDS_FILE = "alert-thresholds.yaml"
RUNBOOK_PATH = "/docs/runbook.md#"
# Managed Prometheus's collectors run in this namespace (GKE's managed collection).
GMP_NAMESPACE = "gmp-system"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
TRITON_METRICS_PORT = "metrics"
DEFAULT_SCRAPE_PATH = "/metrics"  # a PodMonitoring endpoint's path when it names none
# Dashboard API: a mosaicLayout has at most 48 columns; a tile holds exactly one widget kind.
MAX_COLUMNS = 48
WIDGET_KINDS = ("xyChart", "scorecard", "text", "timeSeriesTable", "pieChart", "collapsibleGroup")
PLOT_TYPES = ("LINE", "STACKED_AREA", "STACKED_BAR", "HEATMAP")
NAMESPACE_VARIABLE = "${namespace}"
# A metric selector's braces: each must carry the namespace variable, or the chart mixes overlays.
_SELECTOR = re.compile(r"(?<!\$)\{([^{}]*(?:\$\{[^}]*\}[^{}]*)*)\}")


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def threshold(expr: str) -> str | None:
    """What follows the expression's last " > ", the part the overlay's threshold replaces."""
    return expr.rpartition(THRESHOLD_DELIMITER)[2].strip() if THRESHOLD_DELIMITER in expr else None


def alerts(rules: dict) -> list[dict]:
    return [r for g in rules.get("spec", {}).get("groups", []) for r in g.get("rules", []) if "alert" in r]


def recorded(objects: list[dict]) -> set[str]:
    """The series the rendered Rules objects record (their `record` rules)."""
    return {r["record"] for obj in by_kind(objects, "Rules") for g in obj.get("spec", {}).get("groups", [])
            for r in g.get("rules", []) if "record" in r}


def read_thresholds(path: Path) -> dict[str, str] | None:
    """The data of an overlay's alert-thresholds.yaml; None where the directory has none."""
    if not path.is_file():
        return None
    document = next((d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)), {})
    return {str(k): str(v) for k, v in (document.get("data") or {}).items()}


def _check_threshold(name: str, rule: dict, thresholds: dict[str, str] | None) -> list[str]:
    key = rule.get("labels", {}).get("threshold")
    if key is None:
        return []
    value = threshold(rule.get("expr", ""))
    if thresholds is not None and key not in thresholds:
        return [f"alert {name}: label threshold names {key}, which {THRESHOLDS_FILE} does not set"]
    try:
        float(value or "")
    except ValueError:
        return [f"alert {name}: threshold {value!r} after the last ' > ' is not a number; "
                f"set {key} in the overlay's {THRESHOLDS_FILE}"]
    if thresholds is not None and float(value) != float(thresholds[key]):
        return [f"alert {name}: threshold {value} is not {THRESHOLDS_FILE}'s {key} ({thresholds[key]}); "
                "the monitoring component's replacements must copy that key into this alert"]
    return []


def check_alert(rule: dict, runbook_anchors: set[str], thresholds: dict[str, str] | None = None) -> list[str]:
    name = rule["alert"]
    problems = []
    severity = rule.get("labels", {}).get("severity")
    if severity not in SEVERITIES:
        problems.append(f"alert {name}: label severity is {severity!r}; set one of {', '.join(SEVERITIES)}")
    annotations = rule.get("annotations", {})
    if f"Deployment {DEPLOYMENT}" not in annotations.get("summary", ""):
        problems.append(f"alert {name}: annotation summary must name the Deployment ('Deployment {DEPLOYMENT} in …')")
    url = annotations.get("runbook_url", "")
    anchor = url.partition(RUNBOOK_PATH)[2]
    if not url.startswith("https://") or not anchor:
        problems.append(f"alert {name}: annotation runbook_url must be an https link to docs/runbook.md#<section>")
    elif anchor not in runbook_anchors:
        problems.append(f"alert {name}: runbook_url points to #{anchor}, which is no section of docs/runbook.md")
    return problems + _check_threshold(name, rule, thresholds)


def check_rules(objects: list[dict], runbook: Path = RUNBOOK, thresholds: dict[str, str] | None = None) -> list[str]:
    """Every alert of every rendered Rules object, against the overlay's thresholds where it has them."""
    rules = by_kind(objects, "Rules")
    if not rules:
        return []
    runbook_anchors = anchors(runbook.read_text())
    return [
        f"{ref(obj)}: {problem}"
        for obj in rules
        for rule in alerts(obj)
        for problem in check_alert(rule, runbook_anchors, thresholds)
    ]


def check_serving(objects: list[dict]) -> list[str]:
    problems = []
    if not by_kind(objects, "Rules"):
        problems.append("no Rules: a serving overlay is alerted on by the monitoring component (components/monitoring)")
    for deployment in by_kind(objects, "Deployment"):
        problems += check_scrapes(objects, deployment)
    return problems


def _selects(selector: dict | None, labels: dict) -> bool:
    """A label selector's matchLabels (all this repository uses) hold for these labels; {} selects all."""
    return selector is not None and all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _number(port: object, named: dict[str, int]) -> int | None:
    return port if isinstance(port, int) else named.get(str(port))


def _admits_collectors(rule: dict, port: int, named: dict[str, int]) -> bool:
    """An ingress rule that lets pods of gmp-system in on TCP `port`."""
    gmp = {NAMESPACE_LABEL: GMP_NAMESPACE}
    peers = rule.get("from")  # none: every source; a peer without namespaceSelector: this namespace or addresses
    from_gmp = not peers or any("namespaceSelector" in peer and _selects(peer["namespaceSelector"], gmp)
                                for peer in peers)
    ports = rule.get("ports") or [{}]  # no `ports`: every port
    return from_gmp and any(entry.get("protocol", "TCP") == "TCP" and _number(entry.get("port", port), named) == port
                            for entry in ports)


def _reachable(objects: list[dict], labels: dict, port: int, named: dict[str, int]) -> bool:
    policies = [p for p in by_kind(objects, "NetworkPolicy") if _selects(p.get("spec", {}).get("podSelector"), labels)
                and "Ingress" in p.get("spec", {}).get("policyTypes", ["Ingress"])]
    if not policies:
        return True  # nothing isolates the pod (no policy at all is policy/serving.py's message)
    return any(_admits_collectors(rule, port, named) for p in policies for rule in p["spec"].get("ingress", []))


def check_scrapes(objects: list[dict], deployment: dict) -> list[str]:
    """Triton's metrics port and the gateway's /metrics scraped at one interval, and reachable from gmp-system."""
    pod = pod_spec(deployment) or {}
    labels = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    named = {p["name"]: p.get("containerPort") for c in pod.get("containers", []) for p in c.get("ports", [])
             if "name" in p}
    monitors = [m for m in by_kind(objects, "PodMonitoring") if _selects(m.get("spec", {}).get("selector"), labels)]
    if not monitors:
        return [f"{ref(deployment)}: no PodMonitoring selects its pods: neither Triton's metrics nor the gateway's are "
                "scraped (components/monitoring)"]
    endpoints = [(m, e) for m in monitors for e in m.get("spec", {}).get("endpoints", [])]
    problems = []

    def scraping(port_name: str, path: str | None) -> list[dict]:
        return [e for _, e in endpoints if _number(e.get("port"), named) == named.get(port_name)
                and (path is None or e.get("path", DEFAULT_SCRAPE_PATH) == path)]

    triton, gateway_scrapes = scraping(TRITON_METRICS_PORT, None), scraping(gateway.PORT_NAME, gateway.METRICS_PATH)
    if gateway.PORT_NAME in named and not gateway_scrapes:
        problems.append(f"{ref(monitors[0])}: no endpoint scrapes the gateway's {gateway.METRICS_PATH} on port "
                        f"{gateway.PORT_NAME}: what clients get (statuses, refusals, time to first token as they see "
                        "it) would be missing from the dashboard and its alerts")
    intervals = {e.get("interval") for e in triton + gateway_scrapes}
    if triton and gateway_scrapes and len(intervals) > 1:
        problems.append(f"{ref(monitors[0])}: scrapes Triton every {triton[0].get('interval')} and the gateway every "
                        f"{gateway_scrapes[0].get('interval')}: scrape both at one interval, so their rates compare")
    for monitor, endpoint in endpoints:
        port = _number(endpoint.get("port"), named)
        if port is not None and not _reachable(objects, labels, port, named):
            problems.append(f"{ref(monitor)}: scrapes port {endpoint.get('port')} (TCP {port}), but no NetworkPolicy "
                            f"lets Managed Prometheus (namespace {GMP_NAMESPACE}) reach it: every scrape would fail "
                            "(TritonMetricsAbsent) (components/network-policy)")
    return problems


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(tile title, PromQL) of every chart dataset and scorecard."""
    found = []
    for tile in dashboard.get("mosaicLayout", {}).get("tiles", []):
        widget = tile.get("widget", {})
        title = widget.get("title", "")
        sets = widget.get("xyChart", {}).get("dataSets", [])
        if "scorecard" in widget:
            sets = [widget["scorecard"]]
        found += [(title, s.get("timeSeriesQuery", {}).get("prometheusQuery", "")) for s in sets]
    return found


def _check_tile(n: int, tile: dict, columns: int) -> list[str]:
    widget = tile.get("widget", {})
    where = f"tile {n} ({widget.get('title') or 'untitled'})"
    problems = []
    kinds = [k for k in WIDGET_KINDS if k in widget]
    if len(kinds) != 1:
        problems.append(f"{where}: needs exactly one widget kind of {', '.join(WIDGET_KINDS)}, has {kinds}")
    if not widget.get("title"):
        problems.append(f"{where}: needs a title")
    if tile.get("xPos", 0) + tile.get("width", 1) > columns or min(tile.get("width", 1), tile.get("height", 1)) < 1:
        problems.append(f"{where}: does not fit in {columns} columns")
    for data_set in widget.get("xyChart", {}).get("dataSets", []):
        if data_set.get("plotType", "LINE") not in PLOT_TYPES:
            problems.append(f"{where}: plotType {data_set['plotType']!r} is not one of {', '.join(PLOT_TYPES)}")
    return problems


def _overlaps(a: dict, b: dict) -> bool:
    def span(t: dict, pos: str, size: str) -> tuple[int, int]:
        return t.get(pos, 0), t.get(pos, 0) + t.get(size, 1)

    (ax0, ax1), (bx0, bx1) = span(a, "xPos", "width"), span(b, "xPos", "width")
    (ay0, ay1), (by0, by1) = span(a, "yPos", "height"), span(b, "yPos", "height")
    return ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1


def check_dashboard(path: Path = DASHBOARD) -> list[str]:
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        return [f"not JSON: {error}"]
    problems = []
    if not dashboard.get("displayName"):
        problems.append("needs a displayName")
    layout = dashboard.get("mosaicLayout")
    if not isinstance(layout, dict) or not layout.get("tiles"):
        return [*problems, "needs a mosaicLayout with tiles"]
    columns = layout.get("columns", MAX_COLUMNS)
    if not 1 <= columns <= MAX_COLUMNS:
        problems.append(f"mosaicLayout.columns is {columns}; the Dashboard API allows 1 to {MAX_COLUMNS}")
    tiles = layout["tiles"]
    for n, tile in enumerate(tiles):
        problems += _check_tile(n, tile, columns)
        problems += [f"tile {n} overlaps tile {m}" for m in range(n) if _overlaps(tiles[m], tile)]
    variables = {f.get("templateVariable") for f in dashboard.get("dashboardFilters", [])}
    if "namespace" not in variables:
        problems.append("needs a dashboardFilters entry with templateVariable namespace (the overlay's namespace)")
    for title, query in queries(dashboard):
        if not query:
            problems.append(f"{title}: a dataset has no prometheusQuery")
        unscoped = [s for s in _SELECTOR.findall(query) if NAMESPACE_VARIABLE not in s]
        if unscoped or (query and not _SELECTOR.search(query)):
            problems.append(f"{title}: every metric selector needs {NAMESPACE_VARIABLE} inside its braces")
    return problems
