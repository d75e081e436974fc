"""tools/serve.py: the real tritonserver from the nvidia-pytriton wheel, started, made ready, stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serve
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.triton


def tritonservers_on(port: int) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"tritonserver") and f"--http-port={port}".encode() in args:
            found.append(int(cmdline.parent.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_waits_for_ready_and_stops_cleanly_on_a_signal(cpu_repository: Path, signum: int, tmp_path: Path):
    http = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as output:  # a file, not a pipe: tritonserver logs a lot while it stops
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "tools" / "serve.py"), "--repository", str(cpu_repository),
             "--http-port", str(http), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())],
            stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "READY in" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        ready = [line for line in log.read_text().splitlines() if line.startswith("READY in")]
        assert ready and f"http://127.0.0.1:{http}" in ready[0], log.read_text()[-2000:]
        assert serve.is_ready("127.0.0.1", serve.Ports(http, 0, 0))
        assert len(tritonservers_on(http)) == 1
        process.send_signal(signum)
        assert process.wait(timeout=60) == 0
        assert tritonservers_on(http) == []
        assert not serve.is_ready("127.0.0.1", serve.Ports(http, 0, 0))
    finally:
        process.kill()


def test_binds_loopback_unless_asked(cpu_repository: Path):
    command = serve.server_command(cpu_repository, serve.Ports(), "127.0.0.1")
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"} <= set(command)
    assert "--http-address=0.0.0.0" in serve.server_command(cpu_repository, serve.Ports(), "0.0.0.0")


def test_a_folder_that_is_not_a_built_repository_is_refused(tmp_path: Path):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "serve.py"), "--repository", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {tmp_path} is not a built model repository (no ensemble/); "
                                     "run `python build/compile.py --gpu cpu` first")


def test_the_python_backend_stub_matches_this_interpreter():
    backend = serve.backend_directory()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert backend.name == version
    stub = backend / "python" / "triton_python_backend_stub"
    assert stub.read_bytes() == (serve.pytriton_dist() / "python_backend_stubs" / version /
                                 "triton_python_backend_stub").read_bytes()
