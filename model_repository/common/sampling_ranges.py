"""The sampling values TensorRT-LLM accepts, so a request can be refused with a clear message.

Copied beside every python model at layout time: standard library only, Python 3.10 to 3.12.
Facts from NVIDIA/TensorRT-LLM at 1.2.1 (the commits are in build/tensorrtllm_backend.toml):
the C++ Triton backend turns each request tensor into an executor SamplingConfig
(triton_backend/inflight_batcher_llm/src/utils.cc, getSamplingConfigFromTensors), whose constructor
checks each value (cpp/tensorrt_llm/executor/samplingConfig.cpp) and fails the request otherwise.
NaN is refused everywhere: no check passes it except the unchecked penalties, where it is never meant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SAMPLING_CONFIG = "cpp/tensorrt_llm/executor/samplingConfig.cpp"
INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Range:
    low: float | None = None  # None: unbounded
    low_inclusive: bool = True
    high: float | None = None
    high_inclusive: bool = True
    whole: bool = False  # an integer tensor (TYPE_INT32 / TYPE_UINT64 in the backend's config.pbtxt)
    note: str = ""

    def accepts(self, value: float) -> bool:
        if math.isnan(value) or (self.whole and not float(value).is_integer()):
            return False
        if self.low is not None and (value < self.low if self.low_inclusive else value <= self.low):
            return False
        return self.high is None or (value <= self.high if self.high_inclusive else value < self.high)

    def describe(self, name: str) -> str:
        bounds = []
        if self.low is not None:
            bounds.append(f"{name} {'>=' if self.low_inclusive else '>'} {_number(self.low)}")
        if self.high is not None:
            bounds.append(f"{name} {'<=' if self.high_inclusive else '<'} {_number(self.high)}")
        text = " and ".join(bounds) or f"any {name} but NaN"
        if self.whole:
            text = f"{text}, a whole number"
        return f"{text} ({self.note})" if self.note else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# Keyed by the C++ backend's input name.
RANGES: dict[str, Range] = {
    # checkTemperature: >= 0 (samplingConfig.cpp:347); 0 is greedy.
    "temperature": Range(low=0),
    # checkTopK: >= 0 (samplingConfig.cpp:299); 0 means no top-k. TYPE_INT32 caps it.
    "runtime_top_k": Range(low=0, high=INT32_MAX, whole=True),
    # The backend drops top_p <= 0 before the executor sees it (utils.cc getSamplingConfigFromTensors,
    # tensorrtllm_backend@c2e65b8 inflight_batcher_llm/src/utils.cc:560), so 0 (with top_k 0: greedy)
    # and below mean "no top-p"; what reaches checkTopP must be > 0 and <= 1 (samplingConfig.cpp:308-309).
    "runtime_top_p": Range(high=1, note="0 or less means no top-p"),
    # checkRepetitionPenalty: > 0 (samplingConfig.cpp:374); 1 is no penalty.
    "repetition_penalty": Range(low=0, low_inclusive=False),
    # Stored unchecked by the constructor (samplingConfig.cpp:53-54); 0 is no penalty.
    "presence_penalty": Range(),
    "frequency_penalty": Range(),
    # The constructor runs checkLengthPenalty: >= 0 (samplingConfig.cpp:56, :392).
    "len_penalty": Range(low=0),
    # checkMinTokens: >= 0 (samplingConfig.cpp:356).
    "min_tokens": Range(low=0, high=INT32_MAX, whole=True),
    # checkBeamWidth: > 0 (samplingConfig.cpp:291); the upper bound is the engine's max_beam_width,
    # checked where the plan is known.
    "beam_width": Range(low=1, high=INT32_MAX, whole=True),
    # Stored unchecked (samplingConfig.cpp:48); the backend reads it as TYPE_UINT64.
    "seed": Range(low=0, high=UINT64_MAX, whole=True),
    # checkNumReturnSequences: > 0 (samplingConfig.cpp:419); with beam search also <= beam_width (:420).
    "num_return_sequences": Range(low=1, high=INT32_MAX, whole=True),
}


def range_error(input_name: str, backend_input: str, value: float) -> str | None:
    """None when TensorRT-LLM accepts `value` for `backend_input`, else a message naming `input_name`."""
    allowed = RANGES[backend_input]
    if allowed.accepts(value):
        return None
    return f"{input_name} {value} is out of range: TensorRT-LLM accepts {allowed.describe(input_name)}"
