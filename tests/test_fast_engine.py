"""The ensemble under a fast engine: the no-cost stand-in tensorrt_llm (tools/harness/standin.py), many streams.

A GPU engine streams hundreds of tokens a second per request; the CPU model never does, so this is
where the server around the engine meets that load before a GPU does: every stream must end with its
final response and exactly the expected text, no stream may hang, no python stub may die.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import soak
from conftest import triton_server
from harness import loadgen, standin

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.triton


def io_blocks(config: str) -> str:
    """The input [...] and output [...] blocks of a config.pbtxt, comments dropped."""
    text = "\n".join(line.split("#", 1)[0].rstrip() for line in config.splitlines())
    return "".join(re.findall(r"^(?:input|output) \[.*?^\]", text, flags=re.MULTILINE | re.DOTALL))


def test_standin_has_the_cpu_runtimes_tensors():
    ours = io_blocks((standin.ENGINE / "config.pbtxt").read_text())
    theirs = io_blocks((ROOT / "model_repository" / "tensorrt_llm" / "cpu" / "config.pbtxt").read_text())
    assert ours and ours == theirs


def test_standin_cycle_is_multibyte_text(cpu_repository: Path):
    tokenizer = standin.tokenizer_of(cpu_repository)
    cycle = standin.passage_ids(tokenizer)
    assert standin.expected_text(tokenizer, cycle) == standin.PASSAGE
    # characters that span tokens are what incremental detokenization gets wrong
    assert any("\ufffd" in tokenizer.decode([token]) for token in cycle)
    assert standin.expected_ids(cycle, len(cycle) + 3, 2) == cycle[3:5]


@pytest.fixture(scope="module")
def standin_server(cpu_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("standin")
    repository = standin.layout(cpu_repository, folder / "repository")
    with triton_server(repository, folder) as server:
        yield server


def test_direct_streams_are_the_expected_ids(standin_server):
    expectation = loadgen.Expectation.of(standin_server.repository)
    tally = loadgen.Tally()
    loadgen.drive(standin_server.grpc, "tensorrt_llm", expectation, 4, 256, tally, loadgen.count(8), timeout=30)
    assert tally.outcomes["ok"] == 8, tally.summary() + f" {tally.examples}"


def test_ensemble_under_a_fast_engine(standin_server):
    """~20 s at 64 concurrent 256-token streams: no failure, no hang, full text, the same stub pids."""
    expectation = loadgen.Expectation.of(standin_server.repository)
    pid = standin_server.process.pid
    stubs_before = loadgen.stubs(pid)
    assert {"ensemble_0_0", "tensorrt_llm_0_0"} <= set(stubs_before)
    report = soak.soak(standin_server.process, standin_server.log, standin_server.grpc, expectation, levels=[64],
                       phase_s=20, duration_s=20, tokens=256, timeout=30, verbose=False)
    assert not report.failed, report.summary()
    assert loadgen.stubs(pid) == stubs_before, report.summary()
    assert report.tally.streams >= 64 and report.tally.outcomes["ok"] == report.tally.streams
