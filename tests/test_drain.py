"""A replica that shuts down never strands a request it accepted, on the real tritonserver.

On SIGTERM Triton's HTTP frontend refuses new connections at once and waits for the open ones,
while gRPC still takes requests (tools/policy/upstream_facts.toml, triton.sigterm_drain); the
ensemble opens a new loopback connection for each step of a request. The load here is more
requests than the ensemble has slots, so some wait in Triton's queue, on the no-cost stand-in
engine with a per-token delay so that each answer streams for seconds:

* SIGTERM alone (no preStop, or its quiet wait ran out): the requests that are streaming finish
  with their full text, and every other one, also one sent over gRPC after the signal, fails at once
  with an error that says the server is shutting down, instead of waiting for a slot and failing
  then with a connection error;
* the preStop the manifest ships (gitops/base/drain.py, run as the rendered Deployment runs it, with
  a short settle), then SIGTERM: every request finishes with its full text.

The preStop's other ways out (its quiet timeout, Triton gone) and its wait for the pod's own
connections to Triton's HTTP port (the gateway's) are tried against a stand-in metrics endpoint.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import validate
from conftest import free_port, triton_server, wait_until
from harness import loadgen, standin

ROOT = Path(__file__).resolve().parent.parent
DRAIN = ROOT / "gitops" / "base" / "drain.py"

QUEUED = 6  # requests beyond the ensemble's slots: one waits in execute(), the rest in Triton's queue
TOKENS = 200
PER_TOKEN_DELAY_US = 20_000  # so each answer streams for ~4 s
SHUTTING_DOWN = "tritonserver is shutting down"


@pytest.fixture(scope="module")
def repository(cpu_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return standin.layout(cpu_repository, tmp_path_factory.mktemp("drain") / "repository", PER_TOKEN_DELAY_US)


def slots(repository: Path) -> int:
    """Requests the ensemble works on at once: max_concurrent_requests per instance, times the instances."""
    config = (repository / "ensemble" / "config.pbtxt").read_text()
    per_instance = int(re.search(r'key: "max_concurrent_requests" value: \{ string_value: "(\d+)" \}', config)[1])
    return per_instance * int(re.search(r"instance_group \[ \{ count: (\d+)", config)[1])


def metric(server, name: str, model: str) -> float | None:
    text = requests.get(server.metrics_url, timeout=10).text
    found = re.search(rf'^{name}\{{model="{model}",version="1"\}} (\S+)$', text, re.MULTILINE)
    return float(found[1]) if found else None


@dataclass
class Request:
    seed: int
    outcome: loadgen.Outcome | None = None
    ended: float = 0.0


def send(server, expectation: loadgen.Expectation, seed: int) -> tuple[Request, threading.Thread]:
    """One streamed ensemble request over gRPC, on its own stream, read to its end in a thread."""
    request = Request(seed)

    def run() -> None:
        streamer = loadgen.Streamer(server.grpc, "ensemble", expectation, timeout=60)
        request.outcome = streamer.stream(seed, TOKENS)
        request.ended = time.monotonic()
        streamer.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return request, thread


def load(server, repository: Path) -> list[tuple[Request, threading.Thread]]:
    """More requests than slots; returns once Triton holds all of them: every slot's request is streaming
    from tensorrt_llm (the stand-in counts a request a success once its decode loop has it), one waits
    for a slot in the ensemble's execute() and the rest wait in Triton's queue."""
    expectation = loadgen.Expectation.of(repository)
    count = slots(repository)
    sent = [send(server, expectation, seed) for seed in range(count + QUEUED)]
    wait_until(lambda: metric(server, "nv_inference_request_success", "tensorrt_llm") == count
               and metric(server, "nv_inference_pending_request_count", "ensemble") == QUEUED - 1,
               60, f"{count} requests streaming and {QUEUED - 1} queued")
    return sent


def finish(sent: list[tuple[Request, threading.Thread]], timeout: float) -> list[Request]:
    deadline = time.monotonic() + timeout
    for _, thread in sent:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = [request.seed for request, thread in sent if thread.is_alive()]
    assert not hung, f"requests {hung} had no answer {timeout} s after the load"
    return [request for request, _ in sent]


def drain_command(script: Path, server, settle: int) -> list[str]:
    """The triton container's preStop as the cpu overlay renders it, pointed at this server and at the
    ConfigMap's script as a file, with a short settle."""
    objects = validate.render(ROOT / "overlays" / "cpu")
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c["name"] == "triton")
    command = triton["lifecycle"]["preStop"]["exec"]["command"]
    mount = next(m for m in triton["volumeMounts"] if command[1].startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = next(o for o in objects if o["kind"] == "ConfigMap"
                      and o["metadata"]["name"] == volume["configMap"]["name"])
    script.write_text(config_map["data"][Path(command[1]).name])
    ports = {"--settle-seconds": settle, "--metrics-port": server.metrics_port, "--http-port": server.http_port}
    return [command[0], str(script)] + [
        f"{flag}={ports[flag]}" if flag in ports else argument
        for argument in command[2:] for flag in [argument.split("=", 1)[0]]]


@pytest.mark.triton
def test_sigterm_finishes_streams_and_fails_the_rest_at_once(repository: Path, tmp_path: Path):
    with triton_server(repository, tmp_path) as server:
        sent = load(server, repository)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # gRPC still takes requests while the HTTP frontend drains
        late = send(server, loadgen.Expectation.of(repository), len(sent))
        done = finish([*sent, late], 60)
        assert server.process.wait(60) == 0
    streamed = [r for r in done if r.outcome.kind == "ok"]
    refused = [r for r in done if r.outcome.kind != "ok"]
    assert len(streamed) == slots(repository), [(r.seed, r.outcome) for r in refused]
    assert len(refused) == QUEUED + 1
    for request in refused:
        assert request.outcome.kind == "error" and SHUTTING_DOWN in request.outcome.detail \
            and "retry on another replica" in request.outcome.detail, request.outcome
    # at once: each refusal came before the first stream that was under way ended
    assert max(r.ended for r in refused) < min(r.ended for r in streamed), (
        f"refusals {sorted(round(r.ended - signalled, 1) for r in refused)} s after SIGTERM, "
        f"first stream ended {min(r.ended for r in streamed) - signalled:.1f} s after it")


@pytest.mark.triton
def test_the_shipped_prestop_lets_every_accepted_request_finish(repository: Path, tmp_path: Path):
    with triton_server(repository, tmp_path) as server:
        sent = load(server, repository)
        assert metric(server, "llm_requests_in_flight", "ensemble") == slots(repository) + 1
        began = time.monotonic()
        result = subprocess.run(drain_command(tmp_path / "drain.py", server, settle=1), capture_output=True,
                                text=True, timeout=120)
        drained = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        done = finish(sent, 60)
        assert server.process.wait(60) == 0
    assert result.returncode == 0, result.stderr
    assert "nothing in flight" in result.stdout, result.stdout
    assert [r.outcome.kind for r in done] == ["ok"] * len(done), [r.outcome for r in done if r.outcome.kind != "ok"]
    assert drained >= max(r.ended for r in done), "the preStop returned while requests were still in flight"
    assert drained - began < 60, result.stdout


class Metrics:
    """A stand-in for Triton's metrics endpoint: serves `text`, counts the reads."""

    def __init__(self, text: str):
        self.text, self.reads = text, 0
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                metrics.reads += 1
                body = metrics.text.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def series(in_flight: int, pending: int) -> str:
    return (f'llm_requests_in_flight{{model="ensemble",version="1"}} {in_flight}\n'
            f'nv_inference_pending_request_count{{model="ensemble",version="1"}} {pending}\n'
            'nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 0\n')


def drain(metrics_port: int, http_port: int, quiet_timeout: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(DRAIN), "--settle-seconds=0",
                             f"--quiet-timeout-seconds={quiet_timeout}", f"--metrics-port={metrics_port}",
                             f"--http-port={http_port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_drain_gives_up_after_its_quiet_timeout():
    metrics = Metrics(series(in_flight=1, pending=2))
    try:
        began = time.monotonic()
        out, err = drain(metrics.port, free_port(), quiet_timeout=2).communicate(timeout=30)
    finally:
        metrics.close()
    assert out == ("drain: still in flight after 2 s: llm_requests_in_flight 1, nv_inference_pending_request_count 2, "
                   "connections to the HTTP port 0; SIGTERM now\n"), err
    assert time.monotonic() - began < 15


def test_drain_ends_when_triton_is_gone():
    out, err = drain(free_port(), free_port(), quiet_timeout=60).communicate(timeout=30)
    assert out == "drain: Triton's metrics stopped answering after 0 s\n", err


def test_drain_waits_for_the_pods_own_connections_to_triton():
    """The gateway's streams go straight to tensorrt_llm, which counts nothing: the connection is what shows."""
    metrics = Metrics(series(in_flight=0, pending=0).replace("llm_requests_in_flight", "another_gauge"))
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        process = drain(metrics.port, listener.getsockname()[1], quiet_timeout=60)
        wait_until(lambda: metrics.reads >= 3, 30, "three reads of the metrics")
        assert process.poll() is None, process.communicate()
        client.close()
        accepted.close()
        out, err = process.communicate(timeout=30)
    finally:
        metrics.close()
        listener.close()
    assert out.startswith("drain: nothing in flight after "), err
    # a build from before the gauge: nothing to wait on there, and it says so
    assert out.endswith(" s (llm_requests_in_flight not exported: not waited on)\n"), out
