"""The HPA's series, llm_pod_requests_waiting, live: more streams than the CPU runtime has batch slots, once
straight to Triton's ensemble and once through the gateway's direct path, against a real Prometheus that
scrapes the real tritonserver (tests/conftest.py's, the session's) and the gateway with the labels Managed
Prometheus adds, and evaluates the cpu overlay's rendered rules, the recording rule included.

While the batch's max_batch_size rows decode, the other streams have no first token: the series, read as
the Custom Metrics Stackdriver Adapter reads it, must count exactly those, and fall back to 0 once all
are answered. Every stream asks min_tokens = max_tokens, so the first wave holds every row for the same
number of decode steps, long enough for several scrapes.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import requests
import yaml
from conftest import free_port
from support import promlocal
from test_gateway import MODEL, running_gateway
from test_monitoring_live import adapter_query, cpu_objects, wait_for

pytestmark = pytest.mark.triton

WAITING_BEYOND_BATCH = 6  # streams beyond the batch's rows: what the series must show while the rows decode
TOKENS = 24


@dataclass
class Signal:
    prometheus: promlocal.Prometheus
    query: str  # the HPA's series, as the adapter asks for it (one pod here)
    triton_http: str
    gateway_url: str
    batch: int  # the CPU runtime's max_batch_size (build.json)


@pytest.fixture(scope="module")
def signal(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signal]:
    try:
        promlocal.binaries()
    except promlocal.PrometheusMissing as missing:
        pytest.skip(str(missing))
    work = tmp_path_factory.mktemp("hpa-signal")
    objects = cpu_objects()
    [rules] = [o for o in objects if o["kind"] == "Rules"]
    (work / "rules.yaml").write_text(yaml.safe_dump(promlocal.rule_file(rules, f"{promlocal.SCRAPE_SECONDS}s")))
    batch = json.loads((triton.repository / "build.json").read_text())["limits"]["max_batch_size"]
    # One worker whose bound lets every stream in: none is shed, all wait in the pod.
    options = ("--workers", "1", "--max-in-flight", str(2 * (batch + WAITING_BEYOND_BATCH)))
    with running_gateway(triton.repository, triton.http, work, options=options) as gateway, \
            promlocal.RecordedExporter([]) as recorded, \
            promlocal.running(work, free_port(), f"127.0.0.1:{triton.metrics_port}", recorded.address,
                              [work / "rules.yaml"], {promlocal.POD: gateway.url.removeprefix("http://")}) as prom:
        assert wait_for(prom, 'count(up{job="triton"} == 1) == 2'), "Prometheus never scraped Triton and gateway"
        yield Signal(prom, adapter_query(objects), triton.http, gateway.url, batch)


def ensemble_stream(signal: Signal, n: int) -> int:
    """One stream straight to Triton's ensemble (as tritonclient or genai-perf send it): its text events."""
    payload = {"text_input": f"Count to {n}.", "max_tokens": TOKENS, "min_tokens": TOKENS, "stream": True}
    with requests.post(f"http://{signal.triton_http}/v2/models/ensemble/generate_stream", json=payload, stream=True,
                       timeout=300) as response:
        return sum(1 for line in response.iter_lines() if line.startswith(b"data:") and b'"error"' not in line)


def gateway_stream(signal: Signal, n: int) -> int:
    """One chat stream through the gateway (its direct path to tensorrt_llm): its content chunks."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Count to {n}."}], "max_tokens": TOKENS,
            "min_tokens": TOKENS, "stream": True}
    with httpx.Client(timeout=300) as client, \
            client.stream("POST", f"{signal.gateway_url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        return sum(1 for line in response.iter_lines() if '"content"' in line)


def watched(signal: Signal, stream: Callable[[Signal, int], int]) -> list[float]:
    """batch + WAITING_BEYOND_BATCH streams at once; the series' values, read every quarter second until
    all have ended."""
    values: list[float] = []
    streams = signal.batch + WAITING_BEYOND_BATCH
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        answered = [pool.submit(stream, signal, n) for n in range(streams)]
        while not all(f.done() for f in answered):
            values += [float(s["value"][1]) for s in signal.prometheus.query(signal.query)]
            time.sleep(0.25)
    assert all(f.result() > 0 for f in answered)
    return values


def test_the_series_exists_at_zero_before_any_load(signal: Signal) -> None:
    [sample] = wait_for(signal.prometheus, signal.query)
    assert float(sample["value"][1]) == 0 and sample["metric"]["pod"] == promlocal.POD


@pytest.mark.parametrize("stream", [ensemble_stream, gateway_stream], ids=["straight-to-triton", "through-gateway"])
def test_the_series_counts_the_streams_beyond_the_batch_and_falls_back_to_zero(signal: Signal, stream) -> None:
    values = watched(signal, stream)
    # While the first max_batch_size rows decode, exactly the rest wait (before that, rows in prefill count
    # too, never more than every stream; the same request is never counted twice).
    assert WAITING_BEYOND_BATCH in values, values
    assert max(values) <= signal.batch + WAITING_BEYOND_BATCH, values
    assert wait_for(signal.prometheus, f"{signal.query} == 0"), signal.prometheus.query(signal.query)
