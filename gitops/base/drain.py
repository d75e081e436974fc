"""The serving pod's preStop: hold the kubelet's SIGTERM until this pod's Triton has nothing in flight.

On SIGTERM Triton's HTTP frontend refuses new connections at once (tools/policy/upstream_facts.toml,
triton.sigterm_drain), and the ensemble needs a new loopback connection for each step of a request,
so a request it took but has not placed yet would fail. So first this sleeps --settle-seconds, while
the load balancer detaches the pod; then, once a second, it reads what is in flight until it reads
nothing twice in a row, or --quiet-timeout-seconds have passed, or Triton's metrics stop answering:

* llm_requests_in_flight: the requests the ensemble holds, from execute() to its last response;
* nv_inference_pending_request_count: the requests in any model's queue;
* connections from inside the pod to Triton's HTTP port: the gateway's calls (they go straight to
  tensorrt_llm, which counts nothing) and the ensemble's own. Connections from outside are left out:
  the load balancer keeps idle ones open, and its requests to the ensemble are in the gauge.

Twice, because Triton takes a request off its queue just before execute() counts it in. Where a
metric is absent (a build from before the gauge), nothing waits on it, and the output says so.
Standard library only: the triton and gateway containers both run it with their image's python3
(gitops/base/deployment.yaml); it always exits 0, since the kubelet sends SIGTERM either way.
"""

from __future__ import annotations

import argparse
import re
import time
import urllib.request
from pathlib import Path

GAUGES = ("llm_requests_in_flight", "nv_inference_pending_request_count")
ESTABLISHED = "01"  # the state column of /proc/net/tcp
IPV4_MAPPED = "0000000000000000FFFF0000"  # ::ffff:a.b.c.d as /proc/net/tcp6 spells its prefix
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? (?P<value>\S+)", re.MULTILINE)


def gauges(text: str) -> dict[str, float]:
    """Each of GAUGES summed over its series (every model), from Prometheus' text format."""
    totals: dict[str, float] = {}
    for sample in SAMPLE.finditer(text):
        if sample["name"] in GAUGES:
            totals[sample["name"]] = totals.get(sample["name"], 0.0) + float(sample["value"])
    return totals


def loopback(address: str) -> bool:
    """Whether a /proc/net/tcp{,6} address (hex, each 32-bit word little-endian) is 127.0.0.0/8 or ::1."""
    if len(address) == 8:
        return address.endswith("7F")
    return address == "00000000000000000000000001000000" or (
        address.startswith(IPV4_MAPPED) and address.endswith("7F"))


def connections(port: int) -> int:
    """Established connections from inside the pod to `port` on this network namespace, seen from the
    server's side."""
    count = 0
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:  # no IPv6 in this namespace
            continue
        for row in rows:
            local, remote, state = row.split()[1:4]
            local_port = local.partition(":")[2]
            if state == ESTABLISHED and int(local_port, 16) == port and loopback(remote.partition(":")[0]):
                count += 1
    return count


def in_flight(metrics_url: str, http_port: int) -> dict[str, float] | None:
    """What is in flight, by source; None once Triton's metrics stop answering (it has exited)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            found = gauges(response.read().decode())
    except OSError as error:  # urllib wraps a connect timeout in URLError, a read timeout not
        if isinstance(getattr(error, "reason", error), TimeoutError):
            return {"metrics (no answer in 5 s)": 1}  # busy, not gone: keep waiting
        return None
    found["connections to the HTTP port"] = connections(http_port)
    return found


def describe(found: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in found.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle-seconds", type=int, required=True,
                        help="sleep this long first, while the load balancer detaches the pod")
    parser.add_argument("--quiet-timeout-seconds", type=int, required=True,
                        help="then wait at most this long for nothing in flight")
    parser.add_argument("--metrics-port", type=int, required=True, help="Triton's --metrics-port")
    parser.add_argument("--http-port", type=int, required=True, help="Triton's --http-port")
    args = parser.parse_args(argv)
    url = f"http://127.0.0.1:{args.metrics_port}/metrics"
    time.sleep(args.settle_seconds)
    began = time.monotonic()
    quiet_reads, found = 0, {}
    while True:
        waited = time.monotonic() - began
        found = in_flight(url, args.http_port)
        if found is None:
            print(f"drain: Triton's metrics stopped answering after {waited:.0f} s", flush=True)
            return 0
        missing = [name for name in GAUGES if name not in found]
        quiet_reads = quiet_reads + 1 if not any(found.values()) else 0
        if quiet_reads == 2:
            absent = f" ({', '.join(missing)} not exported: not waited on)" if missing else ""
            print(f"drain: nothing in flight after {waited:.0f} s{absent}", flush=True)
            return 0
        if waited >= args.quiet_timeout_seconds:
            print(f"drain: still in flight after {waited:.0f} s: {describe(found)}; SIGTERM now", flush=True)
            return 0
        time.sleep(1)


if __name__ == "__main__":
    raise SystemExit(main())
