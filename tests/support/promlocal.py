"""A real Prometheus (Debian's `prometheus` package) scraping a local tritonserver and gateways as Managed
Prometheus scrapes the pod, for tests/test_monitoring_live.py.

GMP writes every series with the target labels project_id, location, cluster, namespace, job,
instance (and pod, container from PodMonitoring's targetLabels); the scrape here adds the same
namespace, pod, container and job by relabeling, so the rules and the dashboard run unchanged: job
"triton" (the PodMonitoring's name) for both of a pod's endpoints, container "triton" for Triton's
metrics port and "gateway" for the gateway's /metrics.
Series only GKE or the engine runtime produce (DCGM, kube state metrics, the TensorRT-LLM C++
backend, Triton 26.07's first-response histogram) come from RecordedExporter: a stand-in that
serves recorded sample values, scraped with the same labels as a second job.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

NAMESPACE = "triton-cpu"
POD = "triton-5d9c7b8f4-local"
SCRAPE_SECONDS = 1


class PrometheusMissing(RuntimeError):
    """No prometheus/promtool binaries: `apt-get install -y prometheus` (make install does it as root)."""


def binaries() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not prometheus or not promtool:
        raise PrometheusMissing("prometheus and promtool are not on PATH: install Debian's prometheus package "
                                "(`apt-get install -y prometheus`; `make install` does it where it runs as root)")
    return prometheus, promtool


def rule_file(rules: dict, interval: str | None = None) -> dict:
    """The groups of a GMP Rules object as a Prometheus rule file (its spec.groups is the same format),
    evaluated every `interval` instead of the groups' own where given."""
    return {"groups": [{**g, "interval": interval or g.get("interval", "1m")} for g in rules["spec"]["groups"]]}


def _target_labels(job: str, container: str, pod: str) -> list[dict]:
    """What GMP's PodMonitoring puts on every series of the pod (namespace, pod, container, job)."""
    labels = {"namespace": NAMESPACE, "pod": pod, "container": container, "job": job}
    return [{"target_label": k, "replacement": v} for k, v in labels.items()]


def config(triton_metrics: str, recorded: str, rule_files: list[Path], gateways: dict[str, str]) -> dict:
    """`gateways`: {pod name: address of a gateway's /metrics}, each scraped as that pod's gateway container."""
    def job(name: str, target: str, job_label: str, container: str = "triton", pod: str = POD) -> dict:
        return {"job_name": name, "scrape_interval": f"{SCRAPE_SECONDS}s", "static_configs": [{"targets": [target]}],
                "relabel_configs": _target_labels(job_label, container, pod)}

    return {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": [str(p) for p in rule_files],
        # job "triton": the PodMonitoring's name, which GMP uses as the job label.
        "scrape_configs": [job("triton", triton_metrics, "triton"), job("recorded", recorded, "recorded"),
                           *(job(f"gateway-{pod}", address, "triton", "gateway", pod)
                             for pod, address in gateways.items())],
    }


class RecordedExporter:
    """Serves recorded series in the exposition format; counters grow with time, as they would live."""

    def __init__(self, series: list[tuple[str, str, float, float]]) -> None:
        # (metric, labels in braces without them, value at start, growth per second)
        self.series = series
        self.started = time.monotonic()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook
                body = exporter.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def exposition(self) -> str:
        elapsed = time.monotonic() - self.started
        return "".join(f"{m}{{{labels}}} {start + rate * elapsed}\n" for m, labels, start, rate in self.series)

    def __enter__(self) -> RecordedExporter:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict]:
        """The instant vector (or scalar, as one sample) promql returns now; raises on a bad query."""
        params = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=10) as response:
            data = json.load(response)["data"]
        return [{"metric": {}, "value": data["result"]}] if data["resultType"] == "scalar" else data["result"]

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return json.load(response)["data"]


@contextmanager
def running(work: Path, port: int, triton_metrics: str, recorded: str, rule_files: list[Path],
            gateways: dict[str, str]) -> Iterator[Prometheus]:
    """Prometheus on 127.0.0.1:port, scraping every target; stopped on leaving."""
    prometheus, _ = binaries()
    (work / "prometheus.yml").write_text(yaml.safe_dump(config(triton_metrics, recorded, rule_files, gateways)))
    log = open(work / "prometheus.log", "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen([prometheus, f"--config.file={work / 'prometheus.yml'}",
                                f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT)
    client = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/api/v1/status/runtimeinfo"):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"prometheus did not start:\n{(work / 'prometheus.log').read_text()}") from None
                time.sleep(0.2)
        yield client
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
