"""Fixtures that build the default model for CPU and serve it with the real tritonserver."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU_REPOSITORY = ROOT / "out" / "cpu"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A scratch copy of what tools/validate.py reads (gitops/, overlays/, docs/), for breaking one thing."""
    for folder in ("gitops", "overlays", "docs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


def wait_until(condition, timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def cpu_repository() -> Path:
    """The embedded default model built for the CPU target, exactly as the README's command does it.
    `make test` runs the same command first, beside its other installs (Makefile: cpu-repository), so
    there this finds the build up to date and goes on at once."""
    result = subprocess.run([sys.executable, str(ROOT / "build" / "compile.py"), "--gpu", "cpu",
                             "--out", str(CPU_REPOSITORY)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return CPU_REPOSITORY


@dataclass(frozen=True)
class Server:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: Path
    log: Path
    process: subprocess.Popen | None = None  # tritonserver itself, for tests that watch its stub processes

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


@contextmanager
def triton_server(repository: Path, log_dir: Path) -> Iterator[Server]:
    """The real tritonserver on free ports, ready; it must stop cleanly when the tests are done."""
    import serve

    ports = serve.Ports(free_port(), free_port(), free_port())
    log = log_dir / "tritonserver.log"
    try:
        with serve.running(repository, ports, log_file=log) as running:
            yield Server("127.0.0.1", ports.http, ports.grpc, ports.metrics, repository, log, running.process)
    except serve.ServeError:
        pytest.fail(f"tritonserver did not become ready:\n{log.read_text()[-4000:]}")
    assert running.process.returncode == 0, log.read_text()[-4000:]


@pytest.fixture(scope="session")
def triton(cpu_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with triton_server(cpu_repository, tmp_path_factory.mktemp("triton")) as server:
        yield server


@pytest.fixture(scope="module")
def chat(triton):
    """(ids, tokenizer): a user prompt as token ids through the served build's chat template, for tests
    that call tensorrt_llm with ids directly, and that tokenizer (its end id, decoding answers)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(triton.repository / "ensemble" / "1" / "tokenizer")

    def ids(prompt: str) -> list[int]:
        return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=True)["input_ids"])

    return ids, tokenizer
