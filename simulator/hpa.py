"""The HorizontalPodAutoscaler controller as Kubernetes 1.33 computes it, for one Pods metric with an
AverageValue target (what every overlay's HPA is). Names follow upstream's functions in
pkg/controller/podautoscaler (replica_calculator.go, horizontal.go) so a reader can hold the two side by side;
simulator/facts.toml says what each rule is and where, and simulator/hpa_cases.json carries upstream's own
test cases, which tests/test_simulator_control.py runs against this module.

Time is the simulation's clock in seconds: upstream reads time.Now(), here every call is given `now`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from simulator import facts

SELECTS = ("Max", "Min", "Disabled")
POLICY_KINDS = ("Pods", "Percent")
# Pod phases the HPA tells apart (the rest of a Kubernetes pod's phases do not reach a serving pod here).
PHASES = ("Pending", "Running", "Succeeded", "Failed")


@dataclass(frozen=True)
class ScalingPolicy:
    kind: str  # "Pods" | "Percent"
    value: int
    period_s: float

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"scaling policy type {self.kind!r}: must be one of {', '.join(POLICY_KINDS)}")
        if self.value <= 0 or self.period_s <= 0:
            raise ValueError(f"scaling policy {self.kind} {self.value} per {self.period_s} s: "
                             "value and period must be > 0")


@dataclass(frozen=True)
class ScalingRules:
    window_s: float
    select: str  # "Max" | "Min" | "Disabled"
    policies: tuple[ScalingPolicy, ...]

    def __post_init__(self) -> None:
        if self.select not in SELECTS:
            raise ValueError(f"selectPolicy {self.select!r}: must be one of {', '.join(SELECTS)}")
        if self.window_s < 0:
            raise ValueError(f"stabilizationWindowSeconds {self.window_s}: must be >= 0")

    @property
    def longest_period_s(self) -> float:
        return max((p.period_s for p in self.policies), default=0.0)


def _rules(raw: dict, window_s: float) -> ScalingRules:
    return ScalingRules(window_s=raw.get("window_s", window_s), select=raw["select"],
                        policies=tuple(ScalingPolicy(**p) for p in raw["policies"]))


def default_scale_up() -> ScalingRules:
    """The rules the API server fills in for a behavior without scaleUp (facts.toml hpa.default_behavior)."""
    return _rules(facts.facts()["hpa"]["default_behavior"]["scale_up"], 0.0)


def default_scale_down() -> ScalingRules:
    """The same for scaleDown; its window is the downscale-stabilization flag's."""
    window = facts.value("hpa", "downscale_stabilization_s")
    return _rules(facts.facts()["hpa"]["default_behavior"]["scale_down"], window)


@dataclass(frozen=True)
class HpaSpec:
    min_replicas: int
    max_replicas: int
    target_average_value: float  # a Pods metric, AverageValue
    scale_up: ScalingRules
    scale_down: ScalingRules
    tolerance: float = facts.value("hpa", "tolerance")
    sync_period_s: float = facts.value("hpa", "sync_period_s")
    # False where the object has no spec.behavior: upstream then takes its older path (a scale-up of at most
    # max(2 x current, 4) per sync, the downscale-stabilization flag's window, no scale-down rate), and
    # scale_up / scale_down only carry that window.
    has_behavior: bool = True

    def __post_init__(self) -> None:
        if self.max_replicas < 1 or self.min_replicas < 0 or self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas {self.min_replicas}, maxReplicas {self.max_replicas}: "
                             "need 0 <= minReplicas <= maxReplicas and maxReplicas >= 1")
        if self.target_average_value <= 0:
            raise ValueError(f"target averageValue {self.target_average_value}: must be > 0")
        if self.tolerance < 0:
            raise ValueError(f"tolerance {self.tolerance}: must be >= 0")


_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(m|k|M|G|T|Ki|Mi|Gi)?$")
_SUFFIX = {None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30}


def parse_quantity(text: str | int | float) -> float:
    """A Kubernetes resource.Quantity as a number: "4", "500m", "1.5k"."""
    if isinstance(text, int | float):
        return float(text)
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 4, 500m, 1.5k)")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def _object_rules(raw: dict | None, default: ScalingRules, where: str) -> ScalingRules:
    """copyHPAScalingRules: each field the object leaves out comes from the default rules."""
    if raw is None:
        return default
    if "tolerance" in raw:
        raise ValueError(f"spec.behavior.{where}.tolerance (the alpha HPAConfigurableTolerance field) is not simulated")
    policies = default.policies
    if raw.get("policies") is not None:
        policies = tuple(ScalingPolicy(p["type"], int(p["value"]), float(p["periodSeconds"])) for p in raw["policies"])
    window = raw.get("stabilizationWindowSeconds")
    return ScalingRules(window_s=default.window_s if window is None else float(window),
                        select=raw.get("selectPolicy", default.select), policies=policies)


def hpa_spec_from_object(hpa: dict) -> HpaSpec:
    """The HpaSpec of a rendered autoscaling/v2 HorizontalPodAutoscaler, upstream's defaults applied."""
    if hpa.get("kind") != "HorizontalPodAutoscaler" or hpa.get("apiVersion") != "autoscaling/v2":
        raise ValueError("expected an autoscaling/v2 HorizontalPodAutoscaler, "
                         f"got {hpa.get('apiVersion')} {hpa.get('kind')}")
    spec = hpa.get("spec") or {}
    name = (hpa.get("metadata") or {}).get("name", "?")
    metrics = spec.get("metrics") or []
    if len(metrics) != 1 or metrics[0].get("type") != "Pods":
        raise ValueError(f"HPA {name}: the simulator models one Pods metric, got {[m.get('type') for m in metrics]}")
    target = metrics[0]["pods"]["target"]
    if target.get("type") != "AverageValue":
        raise ValueError(f"HPA {name}: the Pods metric's target must be AverageValue, got {target.get('type')}")
    if "maxReplicas" not in spec:
        raise ValueError(f"HPA {name}: spec.maxReplicas is required")
    behavior = spec.get("behavior")
    up, down = default_scale_up(), default_scale_down()
    if behavior is not None:
        up = _object_rules(behavior.get("scaleUp"), up, "scaleUp")
        down = _object_rules(behavior.get("scaleDown"), down, "scaleDown")
    return HpaSpec(min_replicas=int(spec.get("minReplicas", 1)), max_replicas=int(spec["maxReplicas"]),
                   target_average_value=parse_quantity(target["averageValue"]),
                   scale_up=up, scale_down=down, has_behavior=behavior is not None)


@dataclass(frozen=True)
class PodSample:
    """One pod of the HPA's target as the controller sees it at a sync."""

    name: str
    value: float | None  # what the metrics adapter returned; None = metric missing
    ready: bool  # its Ready condition: upstream reads it only for the CPU resource metric, never for a Pods metric
    started_at: float  # likewise read only for CPU (its initialization period)
    phase: str = "Running"  # "Pending" (no node, image pull, init containers), "Running", "Succeeded", "Failed"
    deleting: bool = False  # a deletionTimestamp is set

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"pod {self.name}: phase {self.phase!r} must be one of {', '.join(PHASES)}")


class MetricsUnavailable(ValueError):
    """The sync cannot compute a count (upstream returns an error and leaves the replicas alone)."""


def _milli(value: float) -> int:
    # resource.Quantity.MilliValue(): the metric as an integer of thousandths, rounded up.
    return math.ceil(value * 1000 - 1e-9)


def _within(ratio: float, tolerance_down: float, tolerance_up: float) -> bool:
    # Tolerances.isWithin. HpaSpec has one tolerance both ways: the per-direction field is alpha in 1.33.
    return 1.0 - tolerance_down <= ratio <= 1.0 + tolerance_up


def _usage_ratio(metrics: dict[str, int], target_milli: int) -> tuple[float, int]:
    # metrics.GetMetricUsageRatio: the average is an integer division of milli-values.
    usage = sum(metrics.values()) // len(metrics)
    return usage / target_milli, usage


def group_pods(pods: list[PodSample]) -> tuple[int, set[str], set[str], set[str]]:
    """groupPods for a metric other than CPU: (ready count, unready, missing, ignored). A Pods metric never
    reads `ready` or `started_at`: a Running pod that reports counts, whatever its Ready condition."""
    ready, unready, missing, ignored = 0, set(), set(), set()
    for pod in pods:
        if pod.deleting or pod.phase == "Failed":
            ignored.add(pod.name)
        elif pod.phase == "Pending":
            unready.add(pod.name)
        elif pod.value is None:
            missing.add(pod.name)
        else:
            ready += 1
    return ready, unready, missing, ignored


def pods_metric_replicas(current_replicas: int, target_average_value: float, pods: list[PodSample],
                         tolerance_down: float, tolerance_up: float) -> tuple[int, int]:
    """calcPlainMetricReplicas: the proposed replica count and the average usage (milli) it saw."""
    if not pods:
        raise MetricsUnavailable("no pods returned by selector while calculating replica count")
    target = _milli(target_average_value)
    ready, unready, missing, ignored = group_pods(pods)
    metrics = {p.name: _milli(p.value) for p in pods
               if p.value is not None and p.name not in unready and p.name not in ignored}
    if not metrics:
        raise MetricsUnavailable("did not receive metrics for targeted pods (pods might be unready)")
    ratio, usage = _usage_ratio(metrics, target)
    scale_up_with_unready = bool(unready) and ratio > 1.0
    if not scale_up_with_unready and not missing:
        if _within(ratio, tolerance_down, tolerance_up):
            return current_replicas, usage
        return math.ceil(ratio * ready), usage
    if missing:
        fill = target if ratio < 1.0 else 0 if ratio > 1.0 else None
        if fill is not None:
            metrics.update(dict.fromkeys(missing, fill))
    if scale_up_with_unready:
        metrics.update(dict.fromkeys(unready, 0))
    new_ratio, _ = _usage_ratio(metrics, target)
    if _within(new_ratio, tolerance_down, tolerance_up) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current_replicas, usage
    proposal = math.ceil(new_ratio * len(metrics))
    if (new_ratio < 1.0 and proposal > current_replicas) or (new_ratio > 1.0 and proposal < current_replicas):
        return current_replicas, usage
    return proposal, usage


def change_in_period(events: list[tuple[float, int]], period_s: float, now: float) -> int:
    # getReplicasChangePerPeriod: events strictly after now - period.
    return sum(change for at, change in events if at > now - period_s)


def _period_start(current: int, up_events: list[tuple[float, int]], down_events: list[tuple[float, int]],
                  period_s: float, now: float) -> int:
    # periodStartReplicas: the count before the changes made within the policy's period.
    return current - change_in_period(up_events, period_s, now) + change_in_period(down_events, period_s, now)


def scale_up_limit(current: int, up_events: list[tuple[float, int]], down_events: list[tuple[float, int]],
                   rules: ScalingRules, now: float) -> int:
    """calculateScaleUpLimitWithScalingRules."""
    if rules.select == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        start = _period_start(current, up_events, down_events, policy.period_s, now)
        if policy.kind == "Pods":
            proposals.append(start + policy.value)
        else:  # rounded up, or a small target would never grow
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
    # no policy: upstream's fold returns MinInt32, which the caller lifts to the current count
    return (min if rules.select == "Min" else max)(proposals, default=current)


def scale_down_limit(current: int, up_events: list[tuple[float, int]], down_events: list[tuple[float, int]],
                     rules: ScalingRules, now: float) -> int:
    """calculateScaleDownLimitWithBehaviors: for scaling down the smallest change is the highest count."""
    if rules.select == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        start = _period_start(current, up_events, down_events, policy.period_s, now)
        if policy.kind == "Pods":
            proposals.append(start - policy.value)
        else:
            proposals.append(int(start * (1 - policy.value / 100)))  # Go's int32() truncates
    return (max if rules.select == "Min" else min)(proposals, default=current)


def convert_with_rules(current: int, desired: int, min_replicas: int, max_replicas: int) -> tuple[int, str]:
    """convertDesiredReplicasWithRules (no spec.behavior): min/max, and at most max(2 x current, 4) up."""
    limit = facts.value("hpa", "legacy_scale_up_limit")
    ceiling = int(max(limit["factor"] * current, limit["minimum"]))
    allowed, reason = (ceiling, "ScaleUpLimit") if max_replicas > ceiling else (max_replicas, "TooManyReplicas")
    if desired < min_replicas:
        return min_replicas, "TooFewReplicas"
    if desired > allowed:
        return allowed, reason
    return desired, "DesiredWithinRange"


@dataclass
class Hpa:
    """One HPA and the history upstream keeps for it: unstabilized recommendations and scale events."""

    spec: HpaSpec
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    up_events: list[tuple[float, int]] = field(default_factory=list)
    down_events: list[tuple[float, int]] = field(default_factory=list)
    started: bool = False  # recordInitialRecommendation has run

    def sync(self, now: float, current_replicas: int, pods: list[PodSample]) -> int:
        """reconcileAutoscaler: the new desired replicas (the Deployment's spec.replicas) after one sync."""
        spec = self.spec
        if not self.started:
            # recordInitialRecommendation: the count at the first sync is a recommendation, so a new HPA
            # does not scale down before its window has passed.
            self.recommendations.append((now, current_replicas))
            self.started = True
        if current_replicas == 0 and spec.min_replicas != 0:
            return 0  # scaling is disabled for a target scaled to zero by hand
        if current_replicas > spec.max_replicas:
            desired = spec.max_replicas
        elif current_replicas < spec.min_replicas:
            desired = spec.min_replicas
        else:
            try:
                proposal, _ = pods_metric_replicas(current_replicas, spec.target_average_value, pods,
                                                   spec.tolerance, spec.tolerance)
            except MetricsUnavailable:
                return current_replicas
            desired = max(proposal, 0)
            if spec.has_behavior:
                desired = self.normalize_with_behaviors(now, current_replicas, desired)
            else:
                desired = self.normalize(now, current_replicas, desired)
        if desired != current_replicas:
            self.store_scale_event(now, current_replicas, desired)
        return desired

    def normalize(self, now: float, current: int, desired: int) -> int:
        """normalizeDesiredReplicas (no spec.behavior): stabilize down over the flag's window, limit up."""
        stabilized = self.stabilize_recommendation(now, desired)
        return convert_with_rules(current, stabilized, self.spec.min_replicas, self.spec.max_replicas)[0]

    def stabilize_recommendation(self, now: float, desired: int) -> int:
        """stabilizeRecommendation: the highest recommendation within the downscale-stabilization window."""
        cutoff = now - self.spec.scale_down.window_s
        self.recommendations = [(at, r) for at, r in self.recommendations if at > cutoff]
        stabilized = max([desired, *(r for _, r in self.recommendations)])
        self.recommendations.append((now, desired))
        return stabilized

    def normalize_with_behaviors(self, now: float, current: int, desired: int) -> int:
        """normalizeDesiredReplicasWithBehaviors: stabilization windows, then the policies' rate limits."""
        return self.convert_with_behavior_rate(now, current, self.stabilize(now, current, desired))[0]

    def convert_with_behavior_rate(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """convertDesiredReplicasWithBehaviorRate: the count the policies and min/max allow, and upstream's
        reason (the HPA's ScalingLimited condition)."""
        spec = self.spec
        if desired > current:
            limit = max(scale_up_limit(current, self.up_events, self.down_events, spec.scale_up, now), current)
            allowed, reason = (limit, "ScaleUpLimit")
            if spec.max_replicas <= limit:
                allowed, reason = spec.max_replicas, "TooManyReplicas"
            if desired > allowed:
                return allowed, reason
        elif desired < current:
            limit = min(scale_down_limit(current, self.up_events, self.down_events, spec.scale_down, now), current)
            allowed, reason = (limit, "ScaleDownLimit")
            if spec.min_replicas >= limit:
                allowed, reason = spec.min_replicas, "TooFewReplicas"
            if desired < allowed:
                return allowed, reason
        return desired, "DesiredWithinRange"

    def stabilize(self, now: float, current: int, desired: int) -> int:
        """stabilizeRecommendationWithBehaviors: the count moves only as far as every recommendation within
        each window allows (up to the least of the scale-up window, down to the most of the scale-down one)."""
        up_cutoff = now - self.spec.scale_up.window_s
        down_cutoff = now - self.spec.scale_down.window_s
        up = min([desired, *(r for at, r in self.recommendations if at > up_cutoff)])
        down = max([desired, *(r for at, r in self.recommendations if at > down_cutoff)])
        # Upstream overwrites one sample older than both windows; dropping them all leaves the same answers.
        self.recommendations = [(at, r) for at, r in self.recommendations if at > min(up_cutoff, down_cutoff)]
        self.recommendations.append((now, desired))
        return min(max(current, up), down)

    def store_scale_event(self, now: float, previous: int, new: int) -> None:
        """storeScaleEvent: kept only with spec.behavior, for as long as the longest policy period reads it."""
        if not self.spec.has_behavior:
            return
        if new > previous:
            keep = now - self.spec.scale_up.longest_period_s
            self.up_events = [e for e in self.up_events if e[0] > keep] + [(now, new - previous)]
        else:
            keep = now - self.spec.scale_down.longest_period_s
            self.down_events = [e for e in self.down_events if e[0] > keep] + [(now, previous - new)]
