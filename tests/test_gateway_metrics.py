"""The gateway's /metrics (gateway/metrics.py) through the real gateway and tritonserver: what each kind
of answer counts, and two workers' values added up in every scrape, as the pod runs them.

One gateway per module: `python -m gateway --workers 2` with API keys and a bound of one request in
flight per worker, its PROMETHEUS_MULTIPROC_DIR a folder of the test's (the pod's emptyDir), in front
of the session's tritonserver. Nothing is mocked. A scrape of Prometheus itself is
tests/test_monitoring_live.py's.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from conftest import wait_until
from test_gateway import CAPITAL, LONG, MODEL, Gateway, metric, running_gateway

from gateway import metrics

KEYS = {"alice": "sk-alice-0123456789", "bench": "sk-bench-0123456789"}
CHAT = "/v1/chat/completions"


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key]}"}


def chat_body(content: str, **options) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **options}


@pytest.fixture(scope="module")
def multiproc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("multiproc")
    (folder / "counter_4194303.db").write_bytes(b"a previous run's values")  # what a restarted container finds
    return folder


@pytest.fixture(scope="module")
def gateway(triton, multiproc: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("gateway")
    keys = folder / "keys"
    keys.mkdir()
    for name, key in KEYS.items():
        (keys / name).write_text(key)
    options = ("--workers", "2", "--max-in-flight", "1", "--api-keys-dir", str(keys))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(metrics.ENV, str(multiproc))
        with running_gateway(triton.repository, triton.http, folder, options=options) as running:
            patch.undo()
            yield running


@pytest.mark.triton
def test_a_stream_counts_its_status_key_tokens_and_latencies_as_the_client_saw_them(gateway: Gateway) -> None:
    def now() -> dict[str, float]:
        names = ("gateway_time_to_first_token_seconds_sum", "gateway_time_to_first_token_seconds_count",
                 "gateway_inter_token_latency_seconds_count", "gateway_e2e_request_latency_seconds_sum",
                 "gateway_e2e_request_latency_seconds_count", "gateway_prompt_tokens_total",
                 "gateway_generation_tokens_total")
        values = {name: metric(gateway.url, name, api_key="alice") for name in names}
        values["ok"] = metric(gateway.url, "gateway_requests_total", route=CHAT, status="200", api_key="alice")
        return values

    before = now()
    body = chat_body(CAPITAL, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", f"{gateway.url}{CHAT}", json=body, headers=headers("alice"), timeout=60) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: {")]
    usage = httpx.Response(200, content=events[-1][6:]).json()["usage"]
    grown = {name: value - before[name] for name, value in now().items()}
    assert grown["ok"] == 1
    assert grown["gateway_prompt_tokens_total"] == usage["prompt_tokens"]
    assert grown["gateway_generation_tokens_total"] == usage["completion_tokens"] > 1
    assert grown["gateway_time_to_first_token_seconds_count"] == grown["gateway_e2e_request_latency_seconds_count"] == 1
    # one gap per chunk of text after the first token's: at most one per token
    assert 1 <= grown["gateway_inter_token_latency_seconds_count"] < usage["completion_tokens"]
    assert 0 < grown["gateway_time_to_first_token_seconds_sum"] < grown["gateway_e2e_request_latency_seconds_sum"]
    assert metric(gateway.url, "gateway_requests_in_flight", api_key="alice") == 0
    assert metric(gateway.url, "gateway_requests_waiting", api_key="alice") == 0


@pytest.mark.triton
def test_refusals_count_by_status_key_and_parameter_with_bounded_labels(gateway: Gateway) -> None:
    def refused(**labels: str) -> float:
        return metric(gateway.url, "gateway_refused_parameters_total", **labels)

    def answered(status: str, key: str, route: str = CHAT) -> float:
        return metric(gateway.url, "gateway_requests_total", route=route, status=status, api_key=key)

    before = {"logit_bias": refused(param="logit_bias", code="unsupported_parameter", api_key="alice"),
              "other": refused(param="other", code="unknown_parameter", api_key="alice"),
              "400": answered("400", "alice"), "401": answered("401", metrics.UNAUTHENTICATED),
              "413": answered("413", "bench"), "404": answered("404", "bench", metrics.OTHER)}
    url = f"{gateway.url}{CHAT}"
    assert httpx.post(url, json=chat_body(CAPITAL, logit_bias={"1": 5}), headers=headers("alice")).status_code == 400
    # a parameter nobody knows: its name is the client's to choose, so it counts as "other"
    unknown = httpx.post(url, json=chat_body(CAPITAL, made_up_0x5f3759df=1), headers=headers("alice"))
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "made_up_0x5f3759df"
    assert httpx.post(url, json=chat_body(CAPITAL), headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
    assert httpx.post(url, json=chat_body("x" * (1 << 20)), headers=headers("bench")).status_code == 413
    assert httpx.get(f"{gateway.url}/v2/repository/index", headers=headers("bench")).status_code == 404
    for _ in range(3):  # neither health checks nor scrapes count as requests
        assert httpx.get(f"{gateway.url}/health").status_code == httpx.get(f"{gateway.url}/metrics").status_code == 200
    assert refused(param="logit_bias", code="unsupported_parameter", api_key="alice") == before["logit_bias"] + 1
    assert refused(param="other", code="unknown_parameter", api_key="alice") == before["other"] + 1
    assert refused(param="made_up_0x5f3759df") == 0
    assert answered("400", "alice") == before["400"] + 2
    assert answered("401", metrics.UNAUTHENTICATED) == before["401"] + 1
    assert answered("413", "bench") == before["413"] + 1
    assert answered("404", "bench", metrics.OTHER) == before["404"] + 1
    assert metric(gateway.url, "gateway_requests_total", route="/health") == 0
    assert metric(gateway.url, "gateway_requests_total", route="/metrics") == 0


def worker_pids(folder: Path) -> set[int]:
    """The gateway's worker processes, by the live gauge files each writes."""
    return {int(file.stem.rpartition("_")[2]) for file in folder.glob("gauge_livesum_*.db")}


@pytest.mark.triton
def test_one_scrape_adds_up_both_workers_and_a_killed_workers_requests_leave_the_gauges(
        gateway: Gateway, multiproc: Path) -> None:
    assert not (multiproc / "counter_4194303.db").exists(), "a previous run's values were not cleared at start"
    in_flight = {"api_key": "bench"}
    shed_before = metric(gateway.url, "gateway_requests_total", route=CHAT, status="429", api_key="bench")
    body = chat_body(LONG, max_tokens=1000, ignore_eos=True, temperature=0, stream=True)
    with ExitStack() as held:
        # One request in flight per worker: open streams, each on a new connection (the kernel hands it to
        # either worker), until both workers hold one and the next is shed.
        streams, shed = [], 0
        for _ in range(30):
            if len(streams) == 2 and shed:
                break
            client = held.enter_context(httpx.Client(timeout=60))
            response = held.enter_context(client.stream("POST", f"{gateway.url}{CHAT}", json=body,
                                                        headers=headers("bench")))
            if response.status_code == 429:
                shed += 1
                continue
            assert response.status_code == 200
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data: {"))  # its first token has come
            streams.append(lines)
        assert len(streams) == 2 and shed, (len(streams), shed)
        assert len(worker_pids(multiproc)) == 2
        # Whichever worker answers each scrape, it counts both workers' streams.
        for _ in range(6):
            assert metric(gateway.url, "gateway_requests_in_flight", **in_flight) == 2
            assert metric(gateway.url, "gateway_requests_waiting", **in_flight) == 0
            assert metric(gateway.url, "gateway_requests_in_flight_limit") == 2
        assert metric(gateway.url, "gateway_requests_total", route=CHAT, status="429", api_key="bench") == (
            shed_before + shed)
        counted = metric(gateway.url, "gateway_requests_total")
        # A worker killed mid-stream (out of memory, say): uvicorn starts another; the dead one's stream is no
        # longer in flight, while what it counted stays counted.
        os.kill(min(worker_pids(multiproc)), signal.SIGKILL)
        wait_until(lambda: metric(gateway.url, "gateway_requests_in_flight", **in_flight) == 1, 30,
                   "the killed worker's stream leaving requests in flight")
        assert metric(gateway.url, "gateway_requests_total") >= counted
    wait_until(lambda: metric(gateway.url, "gateway_requests_in_flight", **in_flight) == 0, 30,
               "the closed streams leaving requests in flight")


def test_route_and_parameter_labels_are_bounded() -> None:
    assert [metrics.route(p) for p in ("/v1/completions", "/v1/models/SmolLM2", "/wp-admin", "/v1/x")] == [
        "/v1/completions", metrics.MODEL_ROUTE, metrics.OTHER, metrics.OTHER]
    assert [metrics.parameter(p) for p in ("messages[3].tool_calls", "stream_options", "tools", "x" * 40)] == [
        "messages", "stream_options", "tools", metrics.OTHER]


def test_the_workers_folder_is_emptied_of_metric_files_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("counter_12.db", "gauge_livesum_12.db", "notes.txt"):
        (tmp_path / name).write_text("x")
    monkeypatch.setenv(metrics.ENV, str(tmp_path))
    assert metrics.prepare_directory(workers=2) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    monkeypatch.delenv(metrics.ENV)
    assert metrics.prepare_directory(workers=1) is None  # one process keeps its values in memory
