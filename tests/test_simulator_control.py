"""The simulator's control plane: the HPA against upstream Kubernetes' own test cases (simulator/hpa_cases.json),
the metric path's lag and the cluster autoscaler's timing against simulator/facts.toml and build/gpus.toml,
Spot preemption and the fallback pool, and the bill. Pure Python, no servers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import catalog
import estimate
import pytest
import yaml

from simulator import cluster, facts, hpa, metric_path

ROOT = Path(__file__).resolve().parent.parent


def _rules(window_s: float, select: str, *policies: tuple[str, int, float]) -> hpa.ScalingRules:
    return hpa.ScalingRules(window_s, select, tuple(hpa.ScalingPolicy(*p) for p in policies))


def _pods(*values: float | None) -> list[hpa.PodSample]:
    return [hpa.PodSample(f"p{i}", v, True, 0.0) for i, v in enumerate(values)]


# --- the HPA: the manifests' objects ----------------------------------------------------------------------

def test_the_overlays_hpa_reads_with_its_behavior() -> None:
    spec = hpa.hpa_spec_from_object(yaml.safe_load((ROOT / "gitops/components/autoscaling/hpa.yaml").read_text()))
    assert (spec.min_replicas, spec.max_replicas, spec.target_average_value) == (1, 4, 4.0)
    assert spec.scale_up == _rules(0, "Max", ("Pods", 2, 60))
    assert spec.scale_down == _rules(600, "Max", ("Pods", 1, 300))
    assert spec.tolerance == facts.value("hpa", "tolerance")
    assert spec.sync_period_s == facts.value("hpa", "sync_period_s")
    assert spec.has_behavior


def _object(**spec) -> dict:
    target = {"type": "AverageValue", "averageValue": "500m"}
    base = {"maxReplicas": 10, "metrics": [{"type": "Pods", "pods": {"metric": {"name": "q"}, "target": target}}]}
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "t"},
            "spec": base | spec}


def test_upstream_defaults_fill_what_the_object_leaves_out() -> None:
    without = hpa.hpa_spec_from_object(_object())
    assert (without.min_replicas, without.target_average_value, without.has_behavior) == (1, 0.5, False)
    assert without.scale_down.window_s == facts.value("hpa", "downscale_stabilization_s")
    partial = hpa.hpa_spec_from_object(_object(behavior={"scaleDown": {"stabilizationWindowSeconds": 60}}))
    assert partial.has_behavior
    assert partial.scale_up == _rules(0, "Max", ("Pods", 4, 15), ("Percent", 100, 15))
    assert partial.scale_down == _rules(60, "Max", ("Percent", 100, 15))


@pytest.mark.parametrize("change, message", [
    ({"metrics": [{"type": "Resource", "resource": {}}]}, "one Pods metric, got \\['Resource'\\]"),
    ({"metrics": [{"type": "Pods", "pods": {"target": {"type": "Value", "value": "1"}}}]},
     "must be AverageValue, got Value"),
    ({"minReplicas": 5, "maxReplicas": 2}, "minReplicas 5, maxReplicas 2"),
    ({"behavior": {"scaleUp": {"selectPolicy": "Most"}}}, "selectPolicy 'Most'"),
    ({"behavior": {"scaleUp": {"policies": [{"type": "Pod", "value": 1, "periodSeconds": 15}]}}}, "policy type 'Pod'"),
])
def test_a_bad_hpa_object_is_refused_by_name(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hpa.hpa_spec_from_object(_object(**change))


def test_a_quantity_that_is_not_one_is_named() -> None:
    assert hpa.parse_quantity("1.5k") == 1500
    with pytest.raises(ValueError, match="'four' is not a Kubernetes quantity"):
        hpa.parse_quantity("four")


# --- the HPA over time --------------------------------------------------------------------------------------

def test_the_queue_hpa_scales_up_two_pods_a_minute_and_down_one_per_five_after_ten_minutes() -> None:
    spec = hpa.hpa_spec_from_object(yaml.safe_load((ROOT / "gitops/components/autoscaling/hpa.yaml").read_text()))
    controller = hpa.Hpa(spec)
    # 40 waiting on one pod (ratio 10): the policy allows +2 per 60 s, capped at maxReplicas 4.
    assert controller.sync(0, 1, _pods(40)) == 3
    assert controller.sync(15, 3, _pods(40, 0, 0)) == 3  # 2 added within the last 60 s
    assert controller.sync(60, 3, _pods(40, 0, 0)) == 4  # the event at 0 is no longer after 60 - 60
    # The queue empties: the 600 s window holds the count at its highest recommendation until it passes.
    assert [controller.sync(t, 4, _pods(0, 0, 0, 0)) for t in (90, 600)] == [4, 4]
    assert controller.sync(690, 4, _pods(0, 0, 0, 0)) == 3  # every recommendation since 90 s says 1; -1 per 300 s
    assert controller.sync(900, 3, _pods(0, 0, 0)) == 3
    assert controller.sync(990, 3, _pods(0, 0, 0)) == 2  # the event at 690 is no longer after 990 - 300


def test_pending_pods_count_as_zero_only_on_a_scale_up() -> None:
    spec = hpa.HpaSpec(1, 10, 4.0, _rules(0, "Max", ("Percent", 1000, 15)), _rules(0, "Max", ("Percent", 100, 15)))
    pending = hpa.PodSample("new", None, False, 0.0, phase="Pending")
    # 12 on the one Running pod: ratio 3 > 1, so the Pending pod is filled in as 0: ceil(6 / 4 * 2) = 3.
    assert hpa.Hpa(spec).sync(0, 2, [*_pods(12), pending]) == 3
    # 2 on the Running pod: a scale-down ignores the Pending pod altogether: ceil(0.5 * 1) = 1.
    assert hpa.Hpa(spec).sync(0, 2, [*_pods(2), pending]) == 1


def test_missing_metrics_count_as_the_target_on_a_scale_down_and_zero_on_a_scale_up() -> None:
    # (No upstream Pods-metric case tells these apart: both fills give the same count there.)
    down = hpa.pods_metric_replicas(4, 10.0, _pods(2, 2, None, None), 0.1, 0.1)
    assert down == (3, 2000)  # (2 + 2 + 10 + 10) / 4 = 6: ratio 0.6 over 4 pods
    up = hpa.pods_metric_replicas(3, 10.0, _pods(30, 30, None), 0.1, 0.1)
    assert up == (6, 30000)  # (30 + 30 + 0) / 3 = 20: ratio 2 over 3 pods


def test_no_metric_from_any_pod_leaves_the_count_alone() -> None:
    spec = hpa.HpaSpec(1, 10, 4.0, _rules(0, "Max", ("Pods", 4, 15)), _rules(0, "Max", ("Pods", 4, 15)))
    assert hpa.Hpa(spec).sync(0, 3, _pods(None, None, None)) == 3


# --- the metric path --------------------------------------------------------------------------------------

def test_the_scrape_interval_is_the_podmonitorings() -> None:
    document = yaml.safe_load((ROOT / "gitops/components/monitoring/podmonitoring.yaml").read_text())
    interval = next(e["interval"] for e in document["spec"]["endpoints"] if e["port"] == "metrics")
    assert metric_path.podmonitoring_scrape_interval_s() == metric_path.parse_duration(interval) == 15.0


def test_the_hpa_sees_a_change_one_scrape_and_the_ingestion_delay_late() -> None:
    path = metric_path.MetricPath.from_manifests()
    interval, delay = path.scrape_interval_s, facts.value("metric_path", "ingestion_delay_s")
    path.record(1.0, "p", 0.0)
    assert path.read(interval + delay - 0.5, "p") is None  # not scraped and ingested yet: missing
    assert path.read(interval + delay, "p") == 0.0
    path.record(interval + 1.0, "p", 8.0)  # just after a scrape: the next one takes it
    assert path.read(2 * interval + delay - 0.5, "p") == 0.0
    assert path.read(2 * interval + delay, "p") == 8.0
    path.forget("p")
    assert path.read(3 * interval + delay, "p") is None


def test_the_adapters_lookback_is_its_query_window() -> None:
    path = metric_path.MetricPath(15.0, ingestion_delay_s=400.0)
    path.record(0.0, "p", 3.0)
    assert path.read(420.0, "p") is None  # the one readable point is older than the 300 s window
    assert metric_path.MetricPath(15.0).lookback_s == facts.value("metric_path", "adapter_lookback_s") == 300.0


def test_bad_durations_and_out_of_order_records_are_named() -> None:
    with pytest.raises(ValueError, match="'15 seconds' is not a Prometheus duration"):
        metric_path.parse_duration("15 seconds")
    path = metric_path.MetricPath(15.0)
    path.record(10.0, "p", 1.0)
    with pytest.raises(ValueError, match="pod p: recorded at 5.0 after 10.0"):
        path.record(5.0, "p", 1.0)


# --- the cluster ------------------------------------------------------------------------------------------

def _ready_times(c: cluster.Cluster, until: float, step: float = 1.0) -> dict[str, float]:
    seen = {}
    t = c.now
    while t < until:
        t += step
        for pod in c.advance(t)[0]:
            seen[pod] = t
    return seen


def test_a_scale_up_takes_the_next_scan_then_provisioning_then_the_pods_start() -> None:
    pool = cluster.pool_from_catalog("h100", spot=False, max_nodes=4)
    cold = catalog.gpu("h100").cold_start
    assert pool.node_provisioning_s == cold.node_provisioning.seconds
    assert pool.pod_start_s == cold.image_pull.seconds + cold.model_copy.seconds + cold.engine_load.seconds
    c = cluster.Cluster([pool])
    c.set_desired_pods(3.0, 2)
    scan = facts.value("cluster_autoscaler", "scan_interval_s")
    assert c.nodes() == 0 and c.advance(scan - 1)[0] == []
    assert c.advance(scan) == ([], []) and c.nodes() == 2  # one node per Pending pod at the first scan
    ready = _ready_times(c, scan + pool.node_provisioning_s + pool.pod_start_s + 5)
    assert set(ready.values()) == {scan + pool.node_provisioning_s + pool.pod_start_s}
    assert sorted(c.ready_pods()) == sorted(ready)


def test_pods_on_a_pending_node_report_pending_then_running_without_a_metric() -> None:
    pool = cluster.PoolSpec("p", False, 2, 1.0, node_provisioning_s=100, pod_start_s=50, pod_pending_s=20)
    c = cluster.Cluster([pool])
    c.set_desired_pods(0, 1)
    c.advance(115)  # scan at 10, node ready at 110
    assert [s.phase for s in c.samples(lambda pod: 5.0)] == ["Pending"]
    c.advance(131)
    assert [(s.phase, s.value, s.ready) for s in c.samples(lambda pod: 5.0)] == [("Running", 5.0, False)]
    assert c.advance(160)[0] and [s.ready for s in c.samples(lambda pod: 5.0)] == [True]


def test_a_preempted_spot_pod_is_lost_and_the_fallback_pool_replaces_it() -> None:
    spot = cluster.PoolSpec("l4-spot", True, 4, 0.34, node_provisioning_s=60, pod_start_s=120,
                            preemptions_per_node_hour=2.0, stockout_after_preemption_s=3600)
    on_demand = cluster.PoolSpec("l4-on-demand", False, 4, 0.85, node_provisioning_s=60, pod_start_s=120)
    c = cluster.Cluster([spot, on_demand], seed=7)
    c.set_desired_pods(0, 1)
    lost, t = [], 0.0
    while not lost:
        t += 5.0
        lost = c.advance(t)[1]
    assert lost == ["pod-1"] and c.nodes_by_pool()["l4-spot"] == 0 and c.ready_pods() == []
    _ready_times(c, t + 300)
    assert c.nodes_by_pool() == {"l4-spot": 0, "l4-on-demand": 1}
    assert len(c.ready_pods()) == 1 and c.ready_pods() != ["pod-1"]
    # the same seed, the same preemption
    again = cluster.Cluster([spot, on_demand], seed=7)
    again.set_desired_pods(0, 1)
    assert again.advance(t)[1] == ["pod-1"]


def test_an_empty_node_goes_after_the_unneeded_time_and_the_bill_is_node_hours_times_price() -> None:
    pool = cluster.pool_from_catalog("l4", spot=True, max_nodes=4)
    assert pool.price_per_node_hour == estimate.machine_hourly("g2-standard-8", 1)[1]
    c = cluster.Cluster([pool])
    c.set_desired_pods(0, 2)
    _ready_times(c, 3600, step=60)
    c.set_desired_pods(3600, 1)
    unneeded = facts.value("cluster_autoscaler", "scale_down_unneeded_s")
    c.advance(3600 + unneeded - 10)
    assert c.nodes() == 2
    c.advance(3600 + unneeded + 10)
    assert c.nodes() == 1
    c.advance(7200)
    scan = facts.value("cluster_autoscaler", "scan_interval_s")
    node_hours = (7200 - scan) / 3600 + (3600 + unneeded - scan) / 3600
    assert math.isclose(c.gpu_hours(), node_hours)
    assert math.isclose(c.cost(), node_hours * pool.price_per_node_hour)


def test_a_bad_pool_is_named() -> None:
    with pytest.raises(ValueError, match="pool od: only a Spot pool is preempted"):
        cluster.PoolSpec("od", False, 1, 1.0, 1, 1, preemptions_per_node_hour=1.0)
    with pytest.raises(ValueError, match="a cluster needs at least one node pool"):
        cluster.Cluster([])


# --- upstream Kubernetes' own HPA test cases (simulator/hpa_cases.json) --------------------------------------

CASES = json.loads((ROOT / "simulator" / "hpa_cases.json").read_text())


def _case_id(case: dict) -> str:
    return case["upstream"].split(" ", 1)[1]


def _upstream_pods(case: dict, count: int) -> list[hpa.PodSample]:
    """The pods upstream's prepareTestClientSet makes: `count` pods (or one per phase given), Running and Ready
    unless the case says otherwise, the i-th reporting levels[i] if there is one."""
    phases = case.get("pod_phase") or []
    readiness = case.get("pod_readiness") or []
    deletion = case.get("pod_deletion") or []
    levels = case["levels_milli"]
    return [hpa.PodSample(f"test-pod-{i}", levels[i] / 1000 if i < len(levels) else None,
                          readiness[i] if i < len(readiness) else True, 0.0,
                          phase=phases[i] if i < len(phases) else "Running",
                          deleting=deletion[i] if i < len(deletion) else False)
            for i in range(max(count, len(phases)))]


@pytest.mark.parametrize("case", CASES["replica_calculator"], ids=_case_id)
def test_upstream_replica_calculator_case(case: dict) -> None:
    default = facts.value("hpa", "tolerance")
    tolerances = case.get("tolerances", {"down": default, "up": default})
    pods = _upstream_pods(case, case["current_replicas"])
    replicas, usage = hpa.pods_metric_replicas(case["current_replicas"], case["target_milli"] / 1000, pods,
                                               tolerances["down"], tolerances["up"])
    assert (replicas, usage) == (case["expected_replicas"], case["expected_usage_milli"])


@pytest.mark.parametrize("case", CASES["group_pods"], ids=_case_id)
def test_upstream_group_pods_case(case: dict) -> None:
    pods = [hpa.PodSample(p["name"], p["value"], True, 0.0, phase=p["phase"], deleting=p.get("deleting", False))
            for p in case["pods"]]
    assert hpa.group_pods(pods) == (case["ready"], set(case["unready"]), set(case["missing"]), set(case["ignored"]))


@pytest.mark.parametrize("case", CASES["controller"], ids=_case_id)
def test_upstream_controller_case_through_sync(case: dict) -> None:
    spec = hpa.HpaSpec(case["min_replicas"], case["max_replicas"], hpa.parse_quantity(case["target_average_value"]),
                       hpa.default_scale_up(), hpa.default_scale_down(), has_behavior=False)
    controller = hpa.Hpa(spec, started="recommendations" in case)
    pods = _upstream_pods(case, case["spec_replicas"])
    assert controller.sync(0.0, case["spec_replicas"], pods) == case["expected_replicas"]


def _generated_rules(args: list[int] | None, default: hpa.ScalingRules) -> hpa.ScalingRules:
    """upstream's generateScalingRules(pods, podsPeriod, percent, percentPeriod, window), or the API defaults."""
    if args is None:
        return default
    pods, pods_period, percent, percent_period, window = args
    policies = ([hpa.ScalingPolicy("Pods", pods, pods_period)] if pods else []) + \
               ([hpa.ScalingPolicy("Percent", percent, percent_period)] if percent else [])
    return hpa.ScalingRules(window, "Max", tuple(policies))


def _uniform_events(spec: dict | None) -> list[tuple[float, int]]:
    """upstream's generateEventsUniformDistribution: each event mid-way in its share of the period, at now = 0."""
    if spec is None:
        return []
    changes, period = spec["uniform"], spec["period_s"]
    segment = period / len(changes)
    return [(-(period - segment * (i + 1) + segment / 2), change) for i, change in enumerate(changes)]


@pytest.mark.parametrize("case", CASES["scaling_with_rules"], ids=_case_id)
def test_upstream_scaling_with_rules_case(case: dict) -> None:
    spec = hpa.HpaSpec(case["min_replicas"], case["max_replicas"], 1.0,
                       _generated_rules(case["scale_up"], hpa.default_scale_up()),
                       _generated_rules(case["scale_down"], hpa.default_scale_down()))
    controller = hpa.Hpa(spec, up_events=_uniform_events(case.get("scale_up_events")),
                         down_events=_uniform_events(case.get("scale_down_events")))
    got = controller.convert_with_behavior_rate(0.0, case["current_replicas"], case["desired_replicas"])
    assert got == (case["expected_replicas"], case["expected_condition"])


@pytest.mark.parametrize("case", CASES["stabilize_with_behaviors"], ids=_case_id)
def test_upstream_stabilization_with_behavior_case(case: dict) -> None:
    spec = hpa.HpaSpec(0, 1000, 1.0, hpa.ScalingRules(case["scale_up_window_s"], "Max", ()),
                       hpa.ScalingRules(case["scale_down_window_s"], "Max", ()))
    controller = hpa.Hpa(spec, recommendations=[(-r["age_s"], r["replicas"]) for r in case["recommendations"]])
    assert controller.stabilize(0.0, case["current_replicas"], case["desired_replicas"]) == case["expected_replicas"]


@pytest.mark.parametrize("case", CASES["stabilize_legacy"], ids=_case_id)
def test_upstream_stabilization_without_behavior_case(case: dict) -> None:
    down = hpa.ScalingRules(case["window_s"], "Max", ())
    spec = hpa.HpaSpec(0, 1000, 1.0, hpa.default_scale_up(), down, has_behavior=False)
    controller = hpa.Hpa(spec, recommendations=[(-r["age_s"], r["replicas"]) for r in case["recommendations"]])
    assert controller.stabilize_recommendation(0.0, case["desired_replicas"]) == case["expected_replicas"]


@pytest.mark.parametrize("case", CASES["convert_with_rules"], ids=_case_id)
def test_upstream_convert_with_rules_case(case: dict) -> None:
    got = hpa.convert_with_rules(case["current_replicas"], case["desired_replicas"],
                                 case["min_replicas"], case["max_replicas"])
    assert got == (case["expected_replicas"], case["expected_condition"])


@pytest.mark.parametrize("case", CASES["limits"], ids=_case_id)
def test_upstream_select_policy_limit_case(case: dict) -> None:
    raw = case["rules"]
    rules = hpa.ScalingRules(raw["window_s"], raw["select"], tuple(hpa.ScalingPolicy(*p) for p in raw["policies"]))
    limit = hpa.scale_up_limit if case["direction"] == "up" else hpa.scale_down_limit
    assert limit(case["current_replicas"], [], [], rules, 0.0) == case["expected_limit"]


@pytest.mark.parametrize("case", CASES["change_per_period"], ids=_case_id)
def test_upstream_change_per_period_case(case: dict) -> None:
    events = [(-e["age_s"], e["change"]) for e in case["events"]]
    assert hpa.change_in_period(events, case["period_s"], 0.0) == case["expected_change"]


def test_the_case_file_says_what_it_left_out() -> None:
    assert all(item["why"] for item in CASES["left_out"])
    assert sum(len(v) for k, v in CASES.items() if isinstance(v, list) and k != "left_out") >= 80


def test_a_multi_gpu_pool_costs_its_machine_and_counts_its_gpus() -> None:
    pool = cluster.pool_from_catalog("h100", spot=False, max_nodes=2, gpus_per_node=2)
    assert pool.price_per_node_hour == estimate.machine_hourly("a3-highgpu-2g", 2)[0]
    c = cluster.Cluster([pool])
    c.set_desired_pods(0, 1)
    c.advance(3610)
    assert math.isclose(c.gpu_hours(), 2 * 3600 / 3600) and math.isclose(c.cost(), pool.price_per_node_hour)
    with pytest.raises(ValueError, match="h100 has no machine type with 3 GPUs"):
        cluster.pool_from_catalog("h100", spot=False, max_nodes=2, gpus_per_node=3)


def test_the_l4_compute_class_gives_spot_then_on_demand_pools_as_gitops_declares_them() -> None:
    pools = cluster.pools_from_nodepools("l4", spot_extra={"preemptions_per_node_hour": 0.1})
    assert [(p.name, p.spot, p.max_nodes) for p in pools] == [("triton-l4", True, 5), ("triton-l4-on-demand", False, 5)]
    assert pools[0].preemptions_per_node_hour == 0.1 and pools[1].preemptions_per_node_hour == 0.0
    assert pools[1].price_per_node_hour == estimate.machine_hourly("g2-standard-8", 1)[0]
    assert [p.name for p in cluster.pools_from_nodepools("a100-80gb")] == ["triton-a100-80gb"]
    with pytest.raises(ValueError, match="ComputeClass triton-h100 priority 2 is a flex-start a3-highgpu-1g"):
        cluster.pools_from_nodepools("h100")
