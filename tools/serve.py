"""Serve a built model repository with the real tritonserver bundled in the nvidia-pytriton wheel.

The wheel ships `tritonserver`, the python backend and one backend stub per Python version. The stub
must match the interpreter whose packages our python models import, and it links that interpreter's
libpython, so we assemble a backend directory for the running Python and point the library path at it.

Examples:
  python tools/serve.py --repository out/cpu
  python tools/serve.py --repository out/cpu --http-port 8000 --grpc-port 8001 --metrics-port 8002
  python tools/serve.py --repository out/cpu --host 0.0.0.0     # listen beyond this machine
  python tools/serve.py --repository out/cpu --openai           # and the OpenAI API on :9000 (gateway/)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("GKE_TRITON_CACHE", ROOT / ".cache"))


class ServeError(RuntimeError):
    """tritonserver could not be prepared, started or made ready."""


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def pytriton_dist() -> Path:
    try:
        import pytriton
    except ImportError as error:
        raise ServeError("nvidia-pytriton is not installed; run `make install` first") from error
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def backend_directory() -> Path:
    """A backends/ folder whose python backend uses the stub built for this interpreter's version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    dist = pytriton_dist()
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServeError(f"nvidia-pytriton has no python backend stub for Python {version}; use Python 3.10-3.13")
    target = CACHE / "triton-backends" / version
    python_dir = target / "python"
    if not (python_dir / "triton_python_backend_stub").exists():
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(dist / "backends" / "python", staging / "python",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def server_environment(http_address: str) -> dict[str, str]:
    env = dict(os.environ)
    # The ensemble calls the other models through the server's HTTP endpoint (its loopback.py).
    env["TRITON_LOOPBACK_HTTP"] = http_address
    dist = pytriton_dist()
    libs = [str(dist.parent.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [*libs, env.get("LD_LIBRARY_PATH", "")] if p)
    # The stub embeds the base interpreter; it sees this environment's packages only through PYTHONPATH.
    env["PYTHONPATH"] = os.pathsep.join([*site.getsitepackages(), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # One thread per python model process: the CPU model sets its own torch thread count.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def server_command(repository: Path, ports: Ports, host: str, log_verbose: int = 0) -> list[str]:
    dist = pytriton_dist()
    return [
        str(dist / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backend_directory()}",
        f"--cache-directory={dist / 'caches'}",
        f"--http-address={host}",
        f"--grpc-address={host}",
        f"--metrics-address={host}",
        f"--http-port={ports.http}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-port={ports.metrics}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--strict-readiness=true",
        "--disable-auto-complete-config",
        "--exit-timeout-secs=30",
        f"--log-verbose={log_verbose}",
    ]


def start(repository: Path, ports: Ports, host: str = "127.0.0.1", log_file: Path | None = None) -> subprocess.Popen:
    repository = Path(repository).resolve()
    if not (repository / "ensemble").is_dir():
        raise ServeError(f"{repository} is not a built model repository (no ensemble/); "
                         "run `python build/compile.py --gpu cpu` first")
    stdout = open(log_file, "ab") if log_file else None  # noqa: SIM115 - handed to the child
    loopback = f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{ports.http}"
    return subprocess.Popen(server_command(repository, ports, host), env=server_environment(loopback),
                            stdout=stdout, stderr=subprocess.STDOUT if stdout else None)


def is_ready(host: str, ports: Ports) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{ports.http}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_ready(process: subprocess.Popen, host: str, ports: Ports, timeout: float = 120.0) -> float:
    """Seconds until /v2/health/ready answered 200; raises if the server exits or the time runs out."""
    began = time.monotonic()
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    while time.monotonic() - began < timeout:
        if process.poll() is not None:
            raise ServeError(f"tritonserver exited with code {process.returncode} before it was ready; "
                             "its log above says which model failed to load")
        if is_ready(probe_host, ports):
            return time.monotonic() - began
        time.sleep(0.1)
    raise ServeError(f"tritonserver was not ready after {timeout:.0f} s")


def stop(process: subprocess.Popen, timeout: float = 40.0) -> int:
    """SIGTERM lets tritonserver finish in-flight requests (up to --exit-timeout-secs), then exit."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass(frozen=True)
class Running:
    process: subprocess.Popen
    seconds_to_ready: float  # from start, as a user waits for it


@contextmanager
def running(repository: Path, ports: Ports, log_file: Path | None = None,
            timeout: float = 120.0) -> Iterator[Running]:
    """tritonserver on 127.0.0.1, ready; stopped on leaving, also when it never became ready."""
    began = time.monotonic()
    process = start(repository, ports, log_file=log_file)
    try:
        wait_ready(process, "127.0.0.1", ports, timeout)
        yield Running(process, time.monotonic() - began)
    finally:
        stop(process)


def start_gateway(repository: Path, ports: Ports, host: str, port: int) -> subprocess.Popen:
    """The OpenAI-compatible gateway (gateway/) beside this tritonserver, as the pod runs it beside Triton."""
    triton_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return subprocess.Popen([sys.executable, "-m", "gateway", "--repository", str(Path(repository).resolve()),
                             "--triton", f"{triton_host}:{ports.http}", "--host", host, "--port", str(port)], cwd=ROOT)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True, help="built model repository (compile.py --out)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for READY")
    parser.add_argument("--openai", action="store_true", help="also serve the OpenAI API (gateway/) once READY")
    parser.add_argument("--openai-port", type=int, default=9000)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ports = Ports(args.http_port, args.grpc_port, args.metrics_port)
    try:
        process = start(args.repository, ports, args.host)
    except ServeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    stopping = []

    def forward(signum: int, _frame: object) -> None:
        # Only pass the signal on: waiting here would deadlock with the process.wait() it interrupts.
        # tritonserver finishes in-flight requests (up to --exit-timeout-secs) and exits.
        stopping.append(signum)
        process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        seconds = wait_ready(process, args.host, ports, args.ready_timeout)
    except ServeError as error:
        if stopping:
            return process.wait()
        stop(process)
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"READY in {seconds:.1f} s: http://{args.host}:{ports.http} grpc {args.host}:{ports.grpc} "
          f"metrics http://{args.host}:{ports.metrics}/metrics (Ctrl-C to stop)", file=sys.stderr, flush=True)
    if not args.openai:
        return process.wait()
    gateway = start_gateway(args.repository, ports, args.host, args.openai_port)
    print(f"OpenAI API: http://{args.host}:{args.openai_port}/v1", file=sys.stderr, flush=True)
    try:
        return process.wait()
    finally:
        gateway.terminate()  # Ctrl-C reached it too (same process group); this covers SIGTERM
        gateway.wait(40)


if __name__ == "__main__":
    sys.exit(main())
