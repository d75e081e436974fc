"""The alerts as Prometheus itself reads them: promtool checks every overlay's rendered rules and
unit-tests every alert (fires on series that should fire it, silent on healthy ones); the
monitoring policy refuses broken copies with exact messages; every runbook_url section exists.

The series are recorded samples with the labels Managed Prometheus writes (namespace, pod); which
of them a live scrape of the local Triton also produces is tests/test_monitoring_live.py's business.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import validate
import yaml
from policy import monitoring
from support import promlocal

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ("cpu", "l4", "a100-80gb", "h100", "h200")
NS = f'namespace="{promlocal.NAMESPACE}"'
POD = 'pod="triton-5d9c7b8f4-a1"'


def rendered_rules(target: str) -> dict:
    [rules] = [o for o in validate.render(ROOT / "overlays" / target) if o["kind"] == "Rules"]
    return rules


@pytest.fixture(scope="module")
def promtool() -> str:
    try:
        return promlocal.binaries()[1]
    except promlocal.PrometheusMissing as missing:
        pytest.skip(str(missing))


def series(name: str, labels: str, values: str) -> dict:
    return {"series": f"{name}{{{labels}}}", "values": values}


def bucket_series(name: str, model_labels: str, counts: dict[str, str]) -> list[dict]:
    return [series(f"{name}_bucket", f'{model_labels},le="{le}"', values) for le, values in counts.items()]


ENSEMBLE = f'{NS},model="ensemble",version="1"'
HPA = f'{NS},horizontalpodautoscaler="triton"'
GATEWAY = f'{NS},{POD},container="gateway",route="/v1/chat/completions",api_key="bench"'
# Per alert: (series that fire it, its labels when it fires, series of a healthy deployment). Values
# are one per minute; thresholds are the cpu overlay's (alert-thresholds.yaml).
CASES = {
    "TritonAnswersFailing": (
        [series("llm_answers_total", f'{ENSEMBLE},outcome="error"', "0+5x40"),
         series("llm_answers_total", f'{ENSEMBLE},outcome="ok"', "0+5x40"),
         series("nv_inference_request_failure", f'{ENSEMBLE},reason="BACKEND"', "0x40")],
        {"namespace": promlocal.NAMESPACE},
        [series("llm_answers_total", f'{ENSEMBLE},outcome="error"', "0x40"),
         series("llm_answers_total", f'{ENSEMBLE},outcome="ok"', "0+10x40"),
         series("nv_inference_request_failure", f'{ENSEMBLE},reason="BACKEND"', "0x40")],
    ),
    "TritonTimeToFirstTokenSlow": (  # p95 4.85 s against 4 s
        bucket_series("nv_inference_first_response_histogram_ms", ENSEMBLE,
                      {"500": "0x40", "2000": "0x40", "5000": "0+10x40", "+Inf": "0+10x40"}),
        {"namespace": promlocal.NAMESPACE},
        bucket_series("nv_inference_first_response_histogram_ms", ENSEMBLE,
                      {"500": "0+10x40", "2000": "0+10x40", "5000": "0+10x40", "+Inf": "0+10x40"}),
    ),
    "TritonInterTokenLatencySlow": (  # p95 0.975 s against 0.5 s
        bucket_series("llm_inter_token_latency_seconds", ENSEMBLE, {"0.5": "0x40", "1": "0+10x40", "+Inf": "0+10x40"}),
        {"namespace": promlocal.NAMESPACE},
        bucket_series("llm_inter_token_latency_seconds", ENSEMBLE,
                      {"0.1": "0+10x40", "0.5": "0+10x40", "1": "0+10x40", "+Inf": "0+10x40"}),
    ),
    "TritonQueueGrowingAtMaxReplicas": (  # through the recorded llm_pod_requests_waiting
        [series("llm_requests_waiting", f'{ENSEMBLE},{POD}', "0+1x40"),
         series("kube_horizontalpodautoscaler_status_current_replicas", HPA, "4x40"),
         series("kube_horizontalpodautoscaler_spec_max_replicas", HPA, "4x40")],
        {"namespace": promlocal.NAMESPACE},
        # growing too, but the HPA still has room: it is scaling, not stuck
        [series("llm_requests_waiting", f'{ENSEMBLE},{POD}', "0+1x40"),
         series("kube_horizontalpodautoscaler_status_current_replicas", HPA, "2x40"),
         series("kube_horizontalpodautoscaler_spec_max_replicas", HPA, "4x40")],
    ),
    "TritonNoReadyReplica": (
        [series("kube_deployment_status_replicas_available", f'{NS},deployment="triton"', "0x40")],
        {"namespace": promlocal.NAMESPACE, "deployment": "triton"},
        [series("kube_deployment_status_replicas_available", f'{NS},deployment="triton"', "1x40")],
    ),
    "TritonMetricsAbsent": (  # the gateway's scrape fails while Triton's answers
        [series("up", f'{NS},{POD},job="triton",container="triton"', "1x40"),
         series("up", f'{NS},{POD},job="triton",container="gateway"', "0x40")],
        {"namespace": promlocal.NAMESPACE, "container": "gateway"},
        [series("up", f'{NS},{POD},job="triton",container="triton"', "1x40"),
         series("up", f'{NS},{POD},job="triton",container="gateway"', "1x40")],
    ),
    "TritonKvCacheNearlyFull": (
        [series("nv_trt_llm_kv_cache_block_metrics", f'{NS},{POD},kv_cache_block_type="fraction"', "0.97x40")],
        {"namespace": promlocal.NAMESPACE, "pod": "triton-5d9c7b8f4-a1"},
        [series("nv_trt_llm_kv_cache_block_metrics", f'{NS},{POD},kv_cache_block_type="fraction"', "0.5x40")],
    ),
    "TritonGpuMemoryNearlyFull": (  # 78000 of 79000 MiB
        [series("DCGM_FI_DEV_FB_USED", f'{NS},{POD},gpu="0"', "78000x40"),
         series("DCGM_FI_DEV_FB_FREE", f'{NS},{POD},gpu="0"', "1000x40")],
        {"namespace": promlocal.NAMESPACE, "pod": "triton-5d9c7b8f4-a1"},
        [series("DCGM_FI_DEV_FB_USED", f'{NS},{POD},gpu="0"', "70000x40"),
         series("DCGM_FI_DEV_FB_FREE", f'{NS},{POD},gpu="0"', "9000x40")],
    ),
    "TritonPodRestarting": (
        [series("kube_pod_container_status_restarts_total", f'{NS},{POD},container="triton"', "0+1x40")],
        {"namespace": promlocal.NAMESPACE, "pod": "triton-5d9c7b8f4-a1"},
        [series("kube_pod_container_status_restarts_total", f'{NS},{POD},container="triton"', "3x40")],
    ),
    "GatewayServerErrors": (  # 3 of 30 requests a minute are 503s: 10 % against 5 %
        [series("gateway_requests_total", f'{GATEWAY},status="503"', "0+3x40"),
         series("gateway_requests_total", f'{GATEWAY},status="200"', "0+27x40")],
        {"namespace": promlocal.NAMESPACE},
        # refusals (4xx) are the clients' business, not server errors
        [series("gateway_requests_total", f'{GATEWAY},status="400"', "0+10x40"),
         series("gateway_requests_total", f'{GATEWAY},status="200"', "0+27x40")],
    ),
    "GatewayShedding": (  # 5 of 25 generation requests a minute get a 429; model listings (never shed) don't dilute it
        [series("gateway_requests_total", f'{GATEWAY},status="429"', "0+5x40"),
         series("gateway_requests_total", f'{GATEWAY},status="200"', "0+20x40"),
         series("gateway_requests_total", f'{NS},{POD},container="gateway",route="/v1/models",status="200",'
                'api_key="bench"', "0+1000x40")],
        {"namespace": promlocal.NAMESPACE},
        [series("gateway_requests_total", f'{GATEWAY},status="429"', "0+0.5x40"),
         series("gateway_requests_total", f'{GATEWAY},status="200"', "0+20x40")],
    ),
}


def without_annotations(rules: dict) -> dict:
    """promtool test compares annotations too; the policy and `promtool check rules` cover them."""
    stripped = copy.deepcopy(rules)
    for group in stripped["spec"]["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return stripped


def test_every_alert_has_a_unit_test() -> None:
    assert sorted(CASES) == sorted(r["alert"] for r in monitoring.alerts(rendered_rules("cpu")))


def test_promtool_checks_every_overlays_rules(promtool: str, tmp_path: Path) -> None:
    files = []
    for target in OVERLAYS:
        files.append(tmp_path / f"{target}.yaml")
        files[-1].write_text(yaml.safe_dump(promlocal.rule_file(rendered_rules(target))))
    done = subprocess.run([promtool, "check", "rules", *map(str, files)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    recording = len(monitoring.recorded([rendered_rules("cpu")]))
    assert done.stdout.count(f"SUCCESS: {len(CASES) + recording} rules found") == len(OVERLAYS), done.stdout


def test_every_alert_fires_on_its_series_and_stays_silent_on_a_healthy_deployment(promtool: str,
                                                                                  tmp_path: Path) -> None:
    rules = without_annotations(rendered_rules("cpu"))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(promlocal.rule_file(rules)))
    by_name = {r["alert"]: r for r in monitoring.alerts(rules)}
    tests = []
    for alert, (firing, labels, healthy) in CASES.items():
        expected = {**by_name[alert]["labels"], **labels}
        tests.append({"name": f"{alert} fires", "interval": "1m", "input_series": firing,
                      "alert_rule_test": [{"eval_time": "30m", "alertname": alert,
                                           "exp_alerts": [{"exp_labels": expected}]}]})
        tests.append({"name": f"{alert} silent", "interval": "1m", "input_series": healthy,
                      "alert_rule_test": [{"eval_time": "30m", "alertname": alert, "exp_alerts": []}]})
    # No target at all: absent() fires for each container with the selector's job and container.
    tests.append({"name": "TritonMetricsAbsent fires with no target", "interval": "1m",
                  "input_series": [series("kube_deployment_status_replicas_available", NS, "1x40")],
                  "alert_rule_test": [{"eval_time": "30m", "alertname": "TritonMetricsAbsent", "exp_alerts": [
                      {"exp_labels": {"severity": "critical", "job": "triton", "container": container}}
                      for container in ("triton", "gateway")]}]})
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "30s",
                                                         "tests": tests}))
    done = subprocess.run([promtool, "test", "rules", "tests.yaml"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_hpa_series_counts_each_waiting_request_once_and_exists_without_the_gateways(promtool: str,
                                                                                        tmp_path: Path) -> None:
    """llm_pod_requests_waiting per pod: the gateway's direct-path waiting (every key), Triton's queue in
    front of the ensemble and the ensemble's waiting; not the gateway's ensemble-path waiting (those
    requests are the ensemble's too), not tensorrt_llm's own queue (the gateway's and the ensemble's
    requests again), and still there, from Triton's series alone, before the gateway served anyone."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(promlocal.rule_file(rendered_rules("cpu"))))
    gateway = f'{NS},{POD},container="gateway"'
    other = 'pod="triton-5d9c7b8f4-b2"'
    busy = [series("gateway_requests_waiting", f'{gateway},api_key="alice",triton_model="tensorrt_llm"', "2x10"),
            series("gateway_requests_waiting", f'{gateway},api_key="bench",triton_model="tensorrt_llm"', "1x10"),
            series("gateway_requests_waiting", f'{gateway},api_key="bench",triton_model="ensemble"', "5x10"),
            series("nv_inference_pending_request_count", f'{ENSEMBLE},{POD}', "4x10"),
            series("llm_requests_waiting", f'{ENSEMBLE},{POD}', "8x10"),
            series("nv_inference_pending_request_count", f'{NS},{POD},model="tensorrt_llm",version="1"', "6x10"),
            series("nv_inference_pending_request_count", f'{ENSEMBLE},{other}', "0x10"),
            series("llm_requests_waiting", f'{ENSEMBLE},{other}', "1x10")]
    tests = [{"name": "the sum per pod", "interval": "1m", "input_series": busy,
              "promql_expr_test": [{"expr": "llm_pod_requests_waiting", "eval_time": "5m", "exp_samples": [
                  {"labels": f'llm_pod_requests_waiting{{{NS},{POD}}}', "value": 2 + 1 + 4 + 8},
                  {"labels": f'llm_pod_requests_waiting{{{NS},{other}}}', "value": 1}]}]}]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "15s",
                                                         "tests": tests}))
    done = subprocess.run([promtool, "test", "rules", "tests.yaml"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_hpa_reads_a_recorded_series_that_keeps_what_the_adapter_finds_it_by() -> None:
    """GMP sets project_id, location, cluster and namespace on what a Rules object records; the adapter
    finds a Pods metric by those and the `pod` label, which only the rule's own aggregation can keep."""
    facts = tomllib.loads((ROOT / "tools/policy/upstream_facts.toml").read_text())["gke"]["rules_recording_labels"]
    objects = validate.render(ROOT / "overlays" / "cpu")
    [hpa] = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    name = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"].split("|")[1]
    [rule] = [r for g in rendered_rules("cpu")["spec"]["groups"] for r in g["rules"] if r.get("record") == name]
    grouping = re.fullmatch(r"sum by \(([^)]*)\) \(.*\)", rule["expr"], re.S).group(1)
    kept = {label.strip() for label in grouping.split(",")}
    assert facts["adapter_pod_label"] in kept
    assert set(facts["adapter_resource_labels"]) <= set(facts["recorded_labels"]) | kept


def test_every_runbook_url_names_a_section_of_the_runbook() -> None:
    sections = monitoring.anchors((ROOT / "docs" / "runbook.md").read_text())
    for rule in monitoring.alerts(rendered_rules("cpu")):
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("https://github.com/example-org/gke-triton-llm/blob/main/docs/runbook.md#")
        assert url.partition("#")[2] in sections, url


def test_each_overlay_renders_its_own_thresholds() -> None:
    for target in OVERLAYS:
        thresholds = monitoring.read_thresholds(ROOT / "overlays" / target / "alert-thresholds.yaml")
        for rule in monitoring.alerts(rendered_rules(target)):
            key = rule["labels"].get("threshold")
            if key:
                assert float(monitoring.threshold(rule["expr"])) == float(thresholds[key]), (target, key)


# --- the policy refuses broken copies, by name ------------------------------------------------------


def one_alert(name: str) -> dict:
    return next(r for r in monitoring.alerts(rendered_rules("cpu")) if r["alert"] == name)


@pytest.fixture(scope="module")
def sections() -> set[str]:
    return monitoring.anchors((ROOT / "docs" / "runbook.md").read_text())


def test_the_rendered_alerts_pass(sections: set[str]) -> None:
    thresholds = monitoring.read_thresholds(ROOT / "overlays/cpu/alert-thresholds.yaml")
    assert monitoring.check_rules([rendered_rules("cpu")], ROOT / "docs/runbook.md", thresholds) == []


def test_an_alert_without_severity_summary_or_runbook_section_is_refused(sections: set[str]) -> None:
    rule = one_alert("TritonPodRestarting")
    rule["labels"]["severity"] = "page"
    rule["annotations"]["summary"] = "pods restart"
    rule["annotations"]["runbook_url"] = rule["annotations"]["runbook_url"].replace("podrestarting", "pod-restart")
    assert monitoring.check_alert(rule, sections) == [
        "alert TritonPodRestarting: label severity is 'page'; set one of critical, warning",
        "alert TritonPodRestarting: annotation summary must name the Deployment ('Deployment triton in …')",
        "alert TritonPodRestarting: runbook_url points to #alert-tritonpod-restart, which is no section of "
        "docs/runbook.md",
    ]
    del rule["annotations"]["runbook_url"]
    assert monitoring.check_alert(rule, sections)[-1] == (
        "alert TritonPodRestarting: annotation runbook_url must be an https link to docs/runbook.md#<section>")


def test_a_threshold_that_is_not_the_overlays_is_refused(sections: set[str]) -> None:
    rule = one_alert("TritonAnswersFailing")
    thresholds = {"answers_failing_ratio": "0.1"}
    assert monitoring.check_alert(rule, sections, thresholds) == [
        "alert TritonAnswersFailing: threshold 0.05 is not alert-thresholds.yaml's answers_failing_ratio (0.1); "
        "the monitoring component's replacements must copy that key into this alert"
    ]
    assert monitoring.check_alert(rule, sections, {}) == [
        "alert TritonAnswersFailing: label threshold names answers_failing_ratio, which alert-thresholds.yaml "
        "does not set"
    ]
    rule["expr"] = rule["expr"].rpartition(" > ")[0] + " > THRESHOLD"
    assert monitoring.check_alert(rule, sections) == [
        "alert TritonAnswersFailing: threshold 'THRESHOLD' after the last ' > ' is not a number; "
        "set answers_failing_ratio in the overlay's alert-thresholds.yaml"
    ]


def test_an_overlay_without_alert_thresholds_does_not_render(tmp_path: Path) -> None:
    for folder in ("gitops", "overlays", "docs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "overlays/l4/alert-thresholds.yaml").unlink()
    kustomization = tmp_path / "overlays/l4/kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("  - alert-thresholds.yaml\n", ""))
    [result] = validate.validate(tmp_path, None, [tmp_path / "overlays/l4"])
    [problem] = result.problems
    assert problem.startswith("kustomize failed: ") and "alert-thresholds" in problem, problem


def test_the_dashboard_passes_and_broken_ones_are_refused(tmp_path: Path) -> None:
    assert monitoring.check_dashboard() == []
    dashboard = json.loads(monitoring.DASHBOARD.read_text())
    tiles = dashboard["mosaicLayout"]["tiles"]
    tiles[1]["xPos"] = 30
    tiles[2]["widget"]["xyChart"]["dataSets"][0]["timeSeriesQuery"]["prometheusQuery"] = (
        'sum(rate(llm_output_tokens_total{model="ensemble"}[5m]))')
    tiles[3]["widget"]["text"] = {"content": "two kinds"}
    dashboard["dashboardFilters"] = []
    broken = tmp_path / "dashboard.json"
    broken.write_text(json.dumps(dashboard))
    title = [t["widget"]["title"] for t in tiles]
    assert monitoring.check_dashboard(broken) == [
        f"tile 1 ({title[1]}): does not fit in 48 columns",
        f"tile 3 ({title[3]}): needs exactly one widget kind of xyChart, scorecard, text, timeSeriesTable, "
        "pieChart, collapsibleGroup, has ['xyChart', 'text']",
        "needs a dashboardFilters entry with templateVariable namespace (the overlay's namespace)",
        f"{title[2]}: every metric selector needs ${{namespace}} inside its braces",
    ]
