"""What the HPA sees of a pod's gauge, and how late: Managed Prometheus scrapes it every scrape interval,
the point reaches Cloud Monitoring an ingestion delay later, and the Custom Metrics Stackdriver Adapter
answers with the newest point of its lookback window (simulator/facts.toml, metric_path.*). The HPA's own
sync period is the caller's loop (HpaSpec.sync_period_s)."""

from __future__ import annotations

import math
import re
from collections import deque
from pathlib import Path

import yaml

from simulator import facts

ROOT = Path(__file__).resolve().parent.parent
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> float:
    """A Prometheus duration as the PodMonitoring writes it ("15s", "1m", "1m30s") in seconds."""
    match = _DURATION.match(text.strip())
    if not text.strip() or not match:
        raise ValueError(f"{text!r} is not a Prometheus duration (e.g. 15s, 1m)")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600.0 + minutes * 60.0 + seconds


def podmonitoring_scrape_interval_s(path: Path | None = None, port: str | None = None) -> float:
    """The scrape interval of the PodMonitoring's endpoint on Triton's metrics port (the HPA's metric)."""
    where = facts.value("metric_path", "scrape_interval")
    path = path or ROOT / where["file"]
    port = port or where["port"]
    document = yaml.safe_load(path.read_text())
    for endpoint in document["spec"]["endpoints"]:
        if endpoint.get("port") == port:
            return parse_duration(endpoint["interval"])
    raise ValueError(f"{path}: no endpoint on port {port!r}")


class MetricPath:
    """Per pod: the true value over time in, the value the adapter returns at a later time out.

    Scrapes fall at offset_s + k * scrape_interval_s; a scrape samples the last value recorded at or before
    it, and is readable ingestion_delay_s later for lookback_s. Reads must come in time order (the
    simulation's clock), which lets each pod keep only the values a later read can still need."""

    def __init__(self, scrape_interval_s: float, ingestion_delay_s: float | None = None,
                 lookback_s: float | None = None, offset_s: float = 0.0) -> None:
        self.scrape_interval_s = scrape_interval_s
        if ingestion_delay_s is None:
            ingestion_delay_s = facts.value("metric_path", "ingestion_delay_s")
        self.ingestion_delay_s = ingestion_delay_s
        self.lookback_s = facts.value("metric_path", "adapter_lookback_s") if lookback_s is None else lookback_s
        self.offset_s = offset_s
        if scrape_interval_s <= 0 or self.ingestion_delay_s < 0 or self.lookback_s <= 0:
            raise ValueError("scrape interval and lookback must be > 0, ingestion delay >= 0")
        self._values: dict[str, deque[tuple[float, float]]] = {}

    @classmethod
    def from_manifests(cls) -> MetricPath:
        """The path the gitops manifests configure, with the facts' delay and lookback."""
        return cls(podmonitoring_scrape_interval_s())

    def record(self, now: float, pod: str, value: float) -> None:
        """The pod's true gauge from `now` on (call at least once per scrape interval while it changes)."""
        values = self._values.setdefault(pod, deque())
        if values and now < values[-1][0]:
            raise ValueError(f"pod {pod}: recorded at {now} after {values[-1][0]}; record in time order")
        values.append((now, value))

    def forget(self, pod: str) -> None:
        """The pod is gone: no scrape reaches it any more."""
        self._values.pop(pod, None)

    def last_scrape_before(self, t: float) -> float:
        """The time of the last scrape at or before t."""
        return self.offset_s + math.floor((t - self.offset_s) / self.scrape_interval_s) * self.scrape_interval_s

    def read(self, now: float, pod: str) -> float | None:
        """What the adapter returns for the pod at `now`: the newest point readable by then, None if none is."""
        values = self._values.get(pod)
        if not values:
            return None
        scrape = self.last_scrape_before(now - self.ingestion_delay_s)
        # Keep the last value at or before this scrape (and everything after it): later reads need no older ones.
        while len(values) > 1 and values[1][0] <= scrape:
            values.popleft()
        first_at, value = values[0]
        if first_at > scrape:
            return None  # the pod was not there yet at the last readable scrape
        if scrape < now - self.lookback_s:
            return None
        return value
