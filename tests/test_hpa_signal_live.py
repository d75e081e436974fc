"""The HPA's series, llm_pod_requests_waiting, live: more streams than the CPU runtime has batch slots, half
straight to Triton's ensemble and half through the gateway's direct path, against a real Prometheus that
scrapes the real tritonserver (tests/conftest.py's, the session's) and the gateway with the labels Managed
Prometheus adds, and evaluates the cpu overlay's rendered rules, the recording rule included.

The batch's max_batch_size rows are filled first (half each way) with long answers (min_tokens =
max_tokens); once each has its first token the series must read 0 (a request with a slot is not
waiting), and then more streams are sent (half each way): they have no
batch slot until a row frees, many decode steps later. The series, read as the Custom Metrics
Stackdriver Adapter reads it, must count exactly those, from both ways in, and fall back to 0 once all
are answered.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
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

WAITERS_EACH_WAY = 3  # streams sent, each way, once the batch is full: what the series must show
HOLD_TOKENS = 32  # the rows' answers: at ~0.26 s a step (8 rows, README) the waiters wait ~6 s, several scrapes
WAITER_TOKENS = 4
# The series' parts by way in (docs/manifests.md, "Autoscaling").
GATEWAY_PART = 'sum(gateway_requests_waiting{triton_model="tensorrt_llm"})'
ENSEMBLE_PART = ('sum(nv_inference_pending_request_count{model="ensemble"})'
                 ' + sum(llm_requests_waiting{model="ensemble"})')


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
    options = ("--workers", "1", "--max-in-flight", str(batch + 2 * WAITERS_EACH_WAY))
    with running_gateway(triton.repository, triton.http, work, options=options) as gateway, \
            promlocal.RecordedExporter([]) as recorded, \
            promlocal.running(work, free_port(), f"127.0.0.1:{triton.metrics_port}", recorded.address,
                              [work / "rules.yaml"], {promlocal.POD: gateway.url.removeprefix("http://")}) as prom:
        assert wait_for(prom, 'count(up{job="triton"} == 1) == 2'), "Prometheus never scraped Triton and gateway"
        yield Signal(prom, adapter_query(objects), triton.http, gateway.url, batch)


def ensemble_stream(signal: Signal, n: int, tokens: int, first: threading.Event) -> int:
    """One stream straight to Triton's ensemble (as tritonclient or genai-perf send it): its text events;
    `first` is set when the first comes."""
    payload = {"text_input": f"Count to {n}.", "max_tokens": tokens, "min_tokens": tokens, "stream": True}
    with requests.post(f"http://{signal.triton_http}/v2/models/ensemble/generate_stream", json=payload, stream=True,
                       timeout=600) as response:
        events = 0
        for line in response.iter_lines():
            if line.startswith(b"data:") and b'"error"' not in line:
                events += 1
                first.set()
        return events


def gateway_stream(signal: Signal, n: int, tokens: int, first: threading.Event) -> int:
    """One completion stream through the gateway (its direct path to tensorrt_llm; a bare prompt, no chat
    template, so prefill costs the CPU little): its text chunks; `first` is set when the first comes."""
    body = {"model": MODEL, "prompt": f"Count to {n}:", "max_tokens": tokens, "min_tokens": tokens, "stream": True}
    with httpx.Client(timeout=600) as client, \
            client.stream("POST", f"{signal.gateway_url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        chunks = 0
        for line in response.iter_lines():
            if '"text"' in line:
                chunks += 1
                first.set()
        return chunks


def value(prometheus: promlocal.Prometheus, query: str) -> float:
    return sum(float(s["value"][1]) for s in prometheus.query(query))


@pytest.fixture(scope="module")
def observed(signal: Signal) -> list[tuple[float, float, float]]:
    """(the series, its gateway part, its ensemble part) every quarter second, from the moment the waiters
    are sent until every stream has ended."""
    ways: list[Callable] = [ensemble_stream, gateway_stream]
    samples = []
    with concurrent.futures.ThreadPoolExecutor(signal.batch + 2 * WAITERS_EACH_WAY) as pool:
        held = [threading.Event() for _ in range(signal.batch)]
        streams = [pool.submit(ways[n % 2], signal, n, HOLD_TOKENS, event) for n, event in enumerate(held)]
        deadline = time.monotonic() + 600
        while not all(e.is_set() for e in held):
            assert time.monotonic() < deadline and not any(f.done() for f in streams), "the rows never all answered"
            time.sleep(0.1)
        # Every row has its slot: nothing waits, as Prometheus sees it too, before the waiters come.
        assert wait_for(signal.prometheus, f"{signal.query} == 0"), signal.prometheus.query(signal.query)
        assert not any(f.done() for f in streams), "a row ended before the waiters came: raise HOLD_TOKENS"
        streams += [pool.submit(way, signal, 100 + n, WAITER_TOKENS, threading.Event())
                    for way in ways for n in range(WAITERS_EACH_WAY)]
        while not all(f.done() for f in streams):
            samples.append((value(signal.prometheus, signal.query), value(signal.prometheus, GATEWAY_PART),
                            value(signal.prometheus, ENSEMBLE_PART)))
            time.sleep(0.25)
    assert all(f.result() > 0 for f in streams)
    return samples


def test_the_series_exists_at_zero_before_any_load(signal: Signal) -> None:
    [sample] = wait_for(signal.prometheus, signal.query)
    assert float(sample["value"][1]) == 0 and sample["metric"]["pod"] == promlocal.POD


def test_the_series_counts_the_streams_beyond_the_batch_from_both_ways_in(observed: list) -> None:
    # While the rows decode, exactly the waiters wait, half through the gateway and half straight to Triton;
    # never more than all the waiters (no request counted twice), then fewer as rows free.
    waiters = 2 * WAITERS_EACH_WAY
    assert (waiters, WAITERS_EACH_WAY, WAITERS_EACH_WAY) in observed, observed
    assert max(total for total, *_ in observed) <= waiters, observed


def test_the_series_falls_back_to_zero_once_all_are_answered(signal: Signal, observed: list) -> None:
    assert wait_for(signal.prometheus, f"{signal.query} == 0"), signal.prometheus.query(signal.query)
