"""The sampling ranges TensorRT-LLM accepts, at and beyond every boundary."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMON = ROOT / "model_repository" / "common"
sys.path.insert(0, str(COMMON))

import sampling_ranges  # noqa: E402
from sampling_ranges import INT32_MAX, UINT64_MAX, range_error  # noqa: E402

NAN = float("nan")
INF = float("inf")

ACCEPTED = [
    ("temperature", 0.0), ("temperature", 1e-6), ("temperature", 2.0), ("temperature", INF),
    ("runtime_top_k", 0), ("runtime_top_k", 1), ("runtime_top_k", INT32_MAX),
    ("runtime_top_p", 0.0), ("runtime_top_p", 1e-6), ("runtime_top_p", 1.0), ("runtime_top_p", -0.5),
    ("repetition_penalty", 1e-6), ("repetition_penalty", 1.0), ("repetition_penalty", 10.0),
    ("presence_penalty", -2.0), ("presence_penalty", 0.0), ("presence_penalty", 2.0),
    ("frequency_penalty", -2.0), ("frequency_penalty", 0.0), ("frequency_penalty", 2.0),
    ("len_penalty", 0.0), ("len_penalty", 1.0),
    ("min_tokens", 0), ("min_tokens", 1), ("min_tokens", INT32_MAX),
    ("beam_width", 1), ("beam_width", 4),
    ("seed", 0), ("seed", 42), ("seed", UINT64_MAX),
    ("num_return_sequences", 1), ("num_return_sequences", 8),
]

REFUSED = [
    ("temperature", -1e-6), ("temperature", -1.0),
    ("runtime_top_k", -1), ("runtime_top_k", 1.5), ("runtime_top_k", INT32_MAX + 1),
    ("runtime_top_p", 1.000001), ("runtime_top_p", 2.0),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ("len_penalty", -1e-6),
    ("min_tokens", -1), ("min_tokens", 0.5), ("min_tokens", INT32_MAX + 1),
    ("beam_width", 0), ("beam_width", -1), ("beam_width", 1.5),
    ("seed", -1), ("seed", UINT64_MAX + 1), ("seed", 0.5),
    ("num_return_sequences", 0), ("num_return_sequences", -1), ("num_return_sequences", 1.5),
]


@pytest.mark.parametrize(("backend_input", "value"), ACCEPTED)
def test_accepted(backend_input, value):
    assert range_error("x", backend_input, value) is None


@pytest.mark.parametrize(("backend_input", "value"), REFUSED)
def test_refused(backend_input, value):
    message = range_error("client_name", backend_input, value)
    assert message is not None and message.startswith(f"client_name {value} is out of range: TensorRT-LLM accepts ")
    assert "\n" not in message


@pytest.mark.parametrize("backend_input", sorted(sampling_ranges.RANGES))
def test_nan_is_refused_everywhere(backend_input):
    assert range_error("x", backend_input, NAN) is not None


def test_every_backend_sampling_input_has_a_range():
    assert set(sampling_ranges.RANGES) == {
        "temperature", "runtime_top_k", "runtime_top_p", "repetition_penalty", "presence_penalty",
        "frequency_penalty", "len_penalty", "min_tokens", "beam_width", "seed", "num_return_sequences",
    }


def test_greedy_is_top_k_0_with_top_p_0():
    assert range_error("top_k", "runtime_top_k", 0) is None
    assert range_error("top_p", "runtime_top_p", 0.0) is None


def test_messages_name_the_client_input_the_value_and_the_range():
    assert range_error("temperature", "temperature", -1.0) == (
        "temperature -1.0 is out of range: TensorRT-LLM accepts temperature >= 0")
    assert range_error("top_p", "runtime_top_p", 1.5) == (
        "top_p 1.5 is out of range: TensorRT-LLM accepts top_p <= 1 (0 or less means no top-p)")
    assert range_error("repetition_penalty", "repetition_penalty", 0.0) == (
        "repetition_penalty 0.0 is out of range: TensorRT-LLM accepts repetition_penalty > 0")
    assert range_error("n", "beam_width", 0) == (
        "n 0 is out of range: TensorRT-LLM accepts n >= 1 and n <= 2147483647, a whole number")
    assert range_error("presence_penalty", "presence_penalty", NAN) == (
        "presence_penalty nan is out of range: TensorRT-LLM accepts any presence_penalty but NaN")


def test_an_unknown_backend_input_is_a_programming_error():
    with pytest.raises(KeyError):
        range_error("top_a", "runtime_top_a", 0.0)


def test_stdlib_only():
    # copied beside every python model, where only the standard library is certain
    tree = ast.parse((COMMON / "sampling_ranges.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
