"""The alerts, the dashboard and the HPA's metric against a real Prometheus scraping the real Triton and gateway.

Prometheus (Debian's package) scrapes the tritonserver of tests/conftest.py, serving the CPU model,
and the gateway's /metrics, with the target labels Managed Prometheus adds, and evaluates the cpu
overlay's rendered rules. Two gateways: the pod's own, with two workers (as the pod runs it) and a
bound of one request in flight each, so some requests are shed; and a second pod's, whose Triton
cannot be reached, so its answers are 503s. What only GKE or the engine runtime exports comes from
promlocal.RecordedExporter (a stand-in serving recorded samples): the test asserts those metrics
really are absent from the local Triton and gateways, and every other metric really comes from
them, so a wrong metric name or label fails here.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
from pathlib import Path

import httpx
import pytest
import validate
import yaml
from conftest import free_port
from harness.llm_client import http_generate, http_generate_stream
from policy import monitoring
from support import promlocal
from test_gateway import CAPITAL, MODEL, running_gateway

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parent.parent
# Metrics no local scrape can produce, with why, and the samples the stand-in serves for them
# (value at start, growth per second), labelled as GKE and the engine runtime label them.
ENGINE = 'model="tensorrt_llm",version="1"'
GPU = 'gpu="0",UUID="GPU-4b1d0c2e",modelName="NVIDIA H100 80GB HBM3",Hostname="gke-triton-h100-0"'
RECORDED = {
    "nv_inference_first_response_histogram_ms_bucket": "Triton 26.07 with histogram_latencies; the local 2.51 has none",
    "nv_trt_llm_kv_cache_block_metrics": "the TensorRT-LLM C++ backend (engine runtime)",
    "DCGM_FI_DEV_GPU_UTIL": "GKE managed DCGM (GPU nodes)",
    "DCGM_FI_DEV_FB_USED": "GKE managed DCGM (GPU nodes)",
    "DCGM_FI_DEV_FB_FREE": "GKE managed DCGM (GPU nodes)",
    "kube_horizontalpodautoscaler_status_current_replicas": "GKE managed kube state metrics",
    "kube_horizontalpodautoscaler_spec_min_replicas": "GKE managed kube state metrics",
    "kube_horizontalpodautoscaler_spec_max_replicas": "GKE managed kube state metrics",
    "kube_deployment_status_replicas_available": "GKE managed kube state metrics",
    "kube_pod_container_status_restarts_total": "GKE managed kube state metrics",
}
SAMPLES = [
    *[("nv_inference_first_response_histogram_ms_bucket", f'model="ensemble",version="1",le="{le}"', 0, rate)
      for le, rate in (("100", 1), ("500", 6), ("2000", 9), ("5000", 10), ("+Inf", 10))],
    ("nv_trt_llm_kv_cache_block_metrics", f'{ENGINE},kv_cache_block_type="fraction"', 0.42, 0),
    ("DCGM_FI_DEV_GPU_UTIL", GPU, 63, 0),
    ("DCGM_FI_DEV_FB_USED", GPU, 73000, 0),
    ("DCGM_FI_DEV_FB_FREE", GPU, 6600, 0),
    ("kube_horizontalpodautoscaler_status_current_replicas", 'horizontalpodautoscaler="triton"', 1, 0),
    ("kube_horizontalpodautoscaler_spec_min_replicas", 'horizontalpodautoscaler="triton"', 1, 0),
    ("kube_horizontalpodautoscaler_spec_max_replicas", 'horizontalpodautoscaler="triton"', 4, 0),
    ("kube_deployment_status_replicas_available", 'deployment="triton"', 1, 0),
    ("kube_pod_container_status_restarts_total", 'container="triton",uid="0c1f"', 0, 0),
]
# PromQL words that are not metric names.
_WORDS = {"and", "or", "unless", "bool", "by", "on", "ignoring", "without", "group_left", "group_right", "offset"}
_IDENT = re.compile(r"(?<![\w:\"'.])([A-Za-z_:][\w:]*)(\{[^{}]*\})?(\s*\()?")
_GROUPING = re.compile(r"\b(by|on|without|ignoring)\s*\([^)]*\)")


def selectors(promql: str) -> list[str]:
    """The vector selectors of a query: each metric name with its matchers."""
    text = _GROUPING.sub(" ", re.sub(r"\[[^\]]*\]", "", promql))
    found = []
    for name, matchers, call in _IDENT.findall(text):
        if not call and name not in _WORDS:
            found.append(name + matchers)
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(monitoring.DASHBOARD.read_text())
    return [(title, query.replace("${namespace}", f'namespace="{promlocal.NAMESPACE}"')
             .replace("${__interval}", "1m"))
            for title, query in monitoring.queries(dashboard)]


def cpu_objects() -> list[dict]:
    return validate.render(ROOT / "overlays" / "cpu")


def adapter_query(objects: list[dict]) -> str:
    """The HPA's Pods metric as the Custom Metrics Stackdriver Adapter reads it: the Managed Prometheus
    metric prometheus.googleapis.com/<name>/gauge, metric.labels.* selectors, the HPA's namespace, per pod."""
    [hpa] = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]
    family, name, kind = metric["name"].split("|")
    assert (family, kind) == ("prometheus.googleapis.com", "gauge")
    matchers = [f'{k.removeprefix("metric.labels.")}="{v}"'
                for k, v in metric.get("selector", {}).get("matchLabels", {}).items()]
    matchers.append(f'namespace="{hpa["metadata"]["namespace"]}"')
    return f"{name}{{{','.join(matchers)}}}"


# The second pod, whose gateway answers 503: its Triton cannot be reached.
CUT_OFF_POD = "triton-5d9c7b8f4-cutoff"
BENCH_KEY = "sk-bench-0123456789"


class Live:
    def __init__(self, prometheus: promlocal.Prometheus, queue_at_rest: list[dict], queue_peak: float,
                 rules: dict, gateway_statuses: list[int]) -> None:
        self.prometheus, self.queue_at_rest, self.queue_peak, self.rules = prometheus, queue_at_rest, queue_peak, rules
        self.gateway_statuses = gateway_statuses


def through_gateways(url: str, cut_off_url: str) -> list[int]:
    """Four streams at once into the pod's gateway (two workers, one in flight each: some are shed), a
    refused parameter, and a request to the gateway whose Triton is gone. The pod's gateway's statuses."""
    chat = f"{url}/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": CAPITAL}], "max_tokens": 4, "stream": True}
    key = {"Authorization": f"Bearer {BENCH_KEY}"}

    def stream(_: int) -> int:
        with httpx.Client(timeout=60) as client, client.stream("POST", chat, json=body, headers=key) as response:
            response.read()
            return response.status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(stream, range(4)))
    statuses.append(httpx.post(chat, json={**body, "logit_bias": {"1": 5}}, headers=key).status_code)
    assert httpx.post(f"{cut_off_url}/v1/chat/completions", json=body, timeout=30).status_code == 503
    return statuses


def wait_for(prometheus: promlocal.Prometheus, query: str, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not (result := prometheus.query(query)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return result


@pytest.fixture(scope="module")
def live(triton, tmp_path_factory: pytest.TempPathFactory) -> Live:
    try:
        promlocal.binaries()
    except promlocal.PrometheusMissing as missing:
        pytest.skip(str(missing))
    work = tmp_path_factory.mktemp("prometheus")
    objects = cpu_objects()
    [rules] = [o for o in objects if o["kind"] == "Rules"]
    # Evaluated every scrape here, not every 30 s as on GKE, so a short test sees evaluations.
    (work / "rules.yaml").write_text(yaml.safe_dump(promlocal.rule_file(rules, f"{promlocal.SCRAPE_SECONDS}s")))
    query = adapter_query(objects)
    (work / "keys").mkdir()
    (work / "keys" / "bench").write_text(BENCH_KEY)
    options = ("--workers", "2", "--max-in-flight", "1", "--api-keys-dir", str(work / "keys"))
    with promlocal.RecordedExporter(SAMPLES) as recorded, \
            running_gateway(triton.repository, triton.http, work, options=options) as gateway, \
            running_gateway(triton.repository, f"127.0.0.1:{free_port()}", tmp_path_factory.mktemp("cut-off"),
                            ready="/health/live") as cut_off, \
            promlocal.running(work, free_port(), f"127.0.0.1:{triton.metrics_port}", recorded.address,
                              [work / "rules.yaml"], {promlocal.POD: gateway.url.removeprefix("http://"),
                                                      CUT_OFF_POD: cut_off.url.removeprefix("http://")}) as prometheus:
        assert wait_for(prometheus, 'count(up{job="triton"} == 1) == 3'), "Prometheus never scraped Triton and gateways"
        at_rest = wait_for(prometheus, query)
        # Under load: twice the ensemble's batch, so tensorrt_llm's batch is full and the rest queue.
        peak = 0.0
        with concurrent.futures.ThreadPoolExecutor(18) as pool:
            streams = [pool.submit(http_generate_stream, triton.http,
                                   {"text_input": f"Count to {n}.", "max_tokens": 12, "stream": True})
                       for n in range(16)]
            refused = [pool.submit(http_generate, triton.http, {"text_input": "", "max_tokens": 4}) for _ in range(2)]
            while not all(f.done() for f in streams):
                peak = max([peak, *(float(s["value"][1]) for s in prometheus.query(f"sum({query})"))])
                time.sleep(0.25)
        assert all(f.result().error is None for f in streams)
        assert all(f.result()[0] == 400 for f in refused)
        statuses = through_gateways(gateway.url, cut_off.url)
        time.sleep(2 * promlocal.SCRAPE_SECONDS + 1)  # the last answers' counters scraped, the rules evaluated
        yield Live(prometheus, at_rest, peak, rules, statuses)


def test_every_selector_of_the_hpas_recording_rule_returns_data(live: Live) -> None:
    """Each part of llm_pod_requests_waiting is a series the pod serves, by that name and those labels."""
    [rule] = [r for g in live.rules["spec"]["groups"] for r in g["rules"]
              if r.get("record") == "llm_pod_requests_waiting"]
    for selector in selectors(rule["expr"]):
        assert live.prometheus.query(selector), selector


def test_the_hpa_metric_exists_at_zero_load_and_rises_under_load(live: Live) -> None:
    assert [float(s["value"][1]) for s in live.queue_at_rest] == [0.0]
    assert live.queue_at_rest[0]["metric"]["pod"] == promlocal.POD
    assert live.queue_peak > 0


def test_recorded_metrics_are_absent_from_the_local_scrapes_and_every_other_one_comes_from_them(live: Live) -> None:
    scraped = {s["metric"]["__name__"] for s in live.prometheus.query('count by (__name__) ({job="triton"})')}
    queries = [q for _, q in dashboard_queries()] + [r["expr"] for r in monitoring.alerts(live.rules)]
    used = {re.match(r"[\w:]+", s).group(0) for q in queries for s in selectors(q)}
    made = monitoring.recorded([live.rules])  # by the Rules' own recording rules, from the scrapes
    assert sorted(used - scraped - set(RECORDED) - made) == [], \
        "metrics used that neither the pod, the stand-in nor a recording rule makes"
    assert sorted(set(RECORDED) & scraped) == [], "the local pod exports these now: take them off RECORDED"
    assert {m for m, *_ in SAMPLES} == set(RECORDED)


@pytest.mark.parametrize("title", [t for t, _ in dashboard_queries()])
def test_every_dashboard_query_returns_data(live: Live, title: str) -> None:
    for query in [q for t, q in dashboard_queries() if t == title]:
        assert live.prometheus.query(query), query


def test_every_selector_of_every_alert_returns_data_and_each_threshold_compares_a_number(live: Live) -> None:
    for rule in monitoring.alerts(live.rules):
        for selector in selectors(rule["expr"]):
            assert live.prometheus.query(selector), f"{rule['alert']}: {selector}"
        if "threshold" in rule["labels"]:
            [sample] = live.prometheus.query(rule["expr"].rpartition(" > ")[0])
            assert sample["metric"] in ({"namespace": promlocal.NAMESPACE},
                                        {"namespace": promlocal.NAMESPACE, "pod": promlocal.POD}), rule["alert"]


def test_the_load_shows_in_the_answer_metrics(live: Live) -> None:
    ns = f'namespace="{promlocal.NAMESPACE}"'
    answers = {s["metric"]["outcome"]: float(s["value"][1])
               for s in live.prometheus.query(f'llm_answers_total{{{ns},model="ensemble"}}')}
    assert answers["ok"] >= 16 and answers["error"] >= 2
    [tokens] = live.prometheus.query(f"llm_output_tokens_total{{{ns}}}")
    assert float(tokens["value"][1]) >= 16 * 2
    [itl] = live.prometheus.query(
        f"histogram_quantile(0.5, sum by (le) (llm_inter_token_latency_seconds_bucket{{{ns}}}))")
    assert 0.005 < float(itl["value"][1]) < 2


def test_the_gateways_series_come_from_both_its_workers_by_status_key_and_parameter(live: Live) -> None:
    ns, pod = f'namespace="{promlocal.NAMESPACE}"', f'pod="{promlocal.POD}"'
    statuses = {s["metric"]["status"]: float(s["value"][1]) for s in live.prometheus.query(
        f'sum by (status) (gateway_requests_total{{{ns},{pod},container="gateway",api_key="bench"}})')}
    expected = {str(code): float(live.gateway_statuses.count(code)) for code in set(live.gateway_statuses)}
    assert statuses == expected and {"200", "429", "400"} <= set(expected), (statuses, live.gateway_statuses)
    [refused] = live.prometheus.query(f'gateway_refused_parameters_total{{{ns},{pod}}}')
    assert refused["metric"]["param"] == "logit_bias" and float(refused["value"][1]) == 1
    [streams] = live.prometheus.query(f'sum(gateway_time_to_first_token_seconds_count{{{ns},{pod}}})')
    assert float(streams["value"][1]) == statuses["200"]
    [tokens] = live.prometheus.query(f'gateway_generation_tokens_total{{{ns},{pod},api_key="bench"}}')
    assert float(tokens["value"][1]) >= statuses["200"] * 2
    bounds = {s["metric"]["pod"]: float(s["value"][1])
              for s in live.prometheus.query(f"gateway_requests_in_flight_limit{{{ns}}}")}
    assert bounds == {promlocal.POD: 2, CUT_OFF_POD: 16}  # two workers of 1; one of 2 x max_batch_size
    [cut_off] = live.prometheus.query(f'gateway_requests_total{{{ns},pod="{CUT_OFF_POD}",status="503"}}')
    assert cut_off["metric"]["api_key"] == "anonymous" and float(cut_off["value"][1]) == 1


def test_prometheus_evaluates_every_rule_without_error(live: Live) -> None:
    groups = live.prometheus.get("/api/v1/rules")["groups"]
    evaluated = {r["name"]: r for g in groups for r in g["rules"]}
    assert sorted(evaluated) == sorted([r["alert"] for r in monitoring.alerts(live.rules)]
                                       + list(monitoring.recorded([live.rules])))
    assert {name: r["health"] for name, r in evaluated.items() if r["health"] != "ok"} == {}
    # A healthy deployment under a short load: nothing fires (TritonAnswersFailing waits its 5 min `for`;
    # a recording rule has no state).
    assert [r["name"] for r in evaluated.values() if r.get("state") == "firing"] == []
