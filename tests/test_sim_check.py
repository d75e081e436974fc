"""The single-replica check's pieces that need no server (its run against the real tritonserver is the
README's table): the step-model fit recovers known coefficients (the batch term's form, a lone row's
cheaper step, the request latency outside steps), the file it writes is the one the simulator reads and
--refit fits again, decode steps are read off token times, the comparison table, and the command's help
and bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from dataclasses import replace

import numpy as np
import pytest
import sim_check
from conftest import ROOT

from simulator import calibrate, validation
from simulator.replica import StepModel

TRUE = StepModel(overhead_s=0.020, weights_s=0.030, kv_token_s=2e-6, sequence_s=0.004, token_s=0.003, source="known",
                 request_latency_s=0.005)
# as the CPU runtime measured: a lone row's step well below the line through the batched ones, a joining
# row decoding in its joining step (its first token delivered after that forward)
ONE_ROW = replace(TRUE, sequence_s=0.002, multi_row_s=0.035, joining_row_decodes=True, request_latency_s=0.012)
COEFFICIENTS = ("overhead_s", "weights_s", "kv_token_s", "sequence_s", "multi_row_s", "token_s", "request_latency_s")


def synthetic(noise_s: float, seed: int = 0, truth: StepModel = TRUE
              ) -> tuple[list[calibrate.DecodeSample], list[calibrate.PrefillSample]]:
    """Measurements as the true model makes them, with Gaussian noise of `noise_s`: decode steps, and lone
    one-token answers' first tokens (their prompt forwards: a one-token answer leaves before any decode
    forward), each seen request_latency_s later."""
    rng = np.random.default_rng(seed)
    decode = []
    for n in (1, 2, 4, 8):
        for length in (32, 300, 900):
            kv = n * length
            decode.append(calibrate.DecodeSample(n, kv, truth.step(n, kv, n) + rng.normal(0, noise_s)))
    prefill = []
    for tokens in (8, 32, 64, 128, 256, 512, 1024):
        forwards = -(-tokens // 64)
        seconds = truth.request_latency_s + truth.overhead_s * forwards + truth.token_s * tokens
        prefill.append(calibrate.PrefillSample(tokens, forwards, seconds + rng.normal(0, noise_s)))
    return decode, prefill


def test_the_fit_recovers_known_coefficients_exactly_without_noise() -> None:
    decode, prefill = synthetic(noise_s=0.0)
    result = calibrate.fit(decode, prefill, "synthetic")
    for name in COEFFICIENTS:
        assert getattr(result.model, name) == pytest.approx(getattr(TRUE, name), rel=1e-6, abs=1e-12), name
    assert result.model.sequence_form == "linear"  # the one-row form fits as well: the simpler one is kept
    assert result.decode_rms_s == pytest.approx(0.0, abs=1e-9)
    assert result.decode_forms_rms_s["linear"] == pytest.approx(0.0, abs=1e-9)
    assert result.decode_forms_rms_s["sqrt"] > 0.001


def test_the_fit_recovers_a_lone_rows_cheaper_step_and_the_request_latency() -> None:
    decode, prefill = synthetic(noise_s=0.0, truth=ONE_ROW)
    result = calibrate.fit(decode, prefill, "synthetic", joining_row_decodes=True)
    assert (result.model.sequence_form, result.model.joining_row_decodes) == ("linear", True)
    for name in COEFFICIENTS:
        assert getattr(result.model, name) == pytest.approx(getattr(ONE_ROW, name), rel=1e-6), name
    assert result.decode_forms_rms_s["one_row"] == pytest.approx(0.0, abs=1e-9)
    assert min(result.decode_forms_rms_s[f] for f in ("linear", "sqrt", "log")) > 0.005


def test_with_noise_the_one_row_form_is_still_chosen_and_a_lone_rows_step_is_close() -> None:
    decode, prefill = synthetic(noise_s=0.001, seed=5, truth=ONE_ROW)
    model = calibrate.fit(decode, prefill, "synthetic", joining_row_decodes=True).model
    assert model.multi_row_s == pytest.approx(ONE_ROW.multi_row_s, rel=0.1)
    for n, kv in ((1, 64), (2, 600), (8, 8 * 600)):
        assert model.step(n, kv, n) == pytest.approx(ONE_ROW.step(n, kv, n), rel=0.05)
    assert model.request_latency_s == pytest.approx(ONE_ROW.request_latency_s, abs=0.003)


def test_one_stalled_long_prompt_does_not_set_the_prefill_fit() -> None:
    # the longest prompt measured 40% slow (a busy machine): residuals relative to each prompt's time keep the
    # short prompts' first tokens, and the latency outside steps, close to what made them
    decode, prefill = synthetic(noise_s=0.0)
    prefill[-1] = calibrate.PrefillSample(prefill[-1].tokens, prefill[-1].forwards, prefill[-1].seconds * 1.4)
    model = calibrate.fit(decode, prefill, "synthetic").model
    for sample in prefill[:4]:
        fitted = model.request_latency_s + model.overhead_s * sample.forwards + model.token_s * sample.tokens
        assert fitted == pytest.approx(sample.seconds, rel=0.15)
    assert model.request_latency_s == pytest.approx(TRUE.request_latency_s, abs=0.01)


@pytest.mark.parametrize("form", ["sqrt", "log"])
def test_a_concave_batch_term_is_chosen_and_recovered(form: str) -> None:
    truth = replace(TRUE, sequence_form=form, sequence_s=0.030)
    decode, prefill = synthetic(noise_s=0.0, truth=truth)
    result = calibrate.fit(decode, prefill, "synthetic")
    assert result.model.sequence_form == form and result.model.multi_row_s == 0.0
    for name in COEFFICIENTS:
        assert getattr(result.model, name) == pytest.approx(getattr(truth, name), rel=1e-6, abs=1e-12), name


def test_the_fit_stays_close_with_a_millisecond_of_noise() -> None:
    decode, prefill = synthetic(noise_s=0.001, seed=3)
    model = calibrate.fit(decode, prefill, "synthetic").model
    # what the simulator reads: whole steps, within a few percent
    for n, kv in ((1, 64), (8, 8 * 600)):
        assert model.step(n, kv, n) == pytest.approx(TRUE.step(n, kv, n), rel=0.05)
    assert model.step(1, 64, 64) == pytest.approx(TRUE.step(1, 64, 64), rel=0.05)
    assert model.token_s == pytest.approx(TRUE.token_s, rel=0.05)


def test_a_coefficient_the_data_cannot_see_is_zero_not_negative() -> None:
    # y = 2 + 3x exactly, plus a column whose best unconstrained coefficient is negative
    x = np.arange(6.0)
    columns = np.column_stack([np.ones(6), x, [0, 0, 0, 0, 0, 1.0]])
    y = 2 + 3 * x - np.array([0, 0, 0, 0, 0, 0.5])
    unconstrained, *_ = np.linalg.lstsq(columns, y, rcond=None)
    assert unconstrained[2] == pytest.approx(-0.5)
    two, *_ = np.linalg.lstsq(columns[:, :2], y, rcond=None)
    assert calibrate.nonnegative_lstsq(columns, y) == pytest.approx([*two, 0.0])


def test_too_few_measurements_are_refused_by_name() -> None:
    decode, prefill = synthetic(noise_s=0.0)
    with pytest.raises(ValueError, match="decode fit needs"):
        calibrate.fit(decode[:2], prefill, "x")
    with pytest.raises(ValueError, match="prefill fit needs"):
        calibrate.fit(decode, [p for p in prefill if p.forwards == 1], "x")


def test_the_written_file_is_the_step_model_the_simulator_reads(tmp_path) -> None:
    decode, prefill = synthetic(noise_s=0.0)
    result = calibrate.fit(decode, prefill, "tools/sim_check.py on here")
    path = tmp_path / "steps.toml"
    calibrate.write(path, result, machine="2 cores, no GPU", command="python tools/sim_check.py",
                    measured_at="2026-12-07T07:00:00+00:00", decode=decode, prefill=prefill)
    read = StepModel.from_file(path)
    for name, value in vars(result.model).items():
        exact = value is None or isinstance(value, str | bool)
        assert getattr(read, name) == (value if exact else pytest.approx(value, rel=1e-5))
    text = path.read_text()
    assert 'machine = "2 cores, no GPU"' in text and 'command = "python tools/sim_check.py"' in text


def test_refit_fits_a_files_recorded_samples_again_without_a_server(tmp_path) -> None:
    # the shipped calibration, refitted by the command: same samples and provenance, the model from them
    path = tmp_path / "cpu_step_model.toml"
    shutil.copy(ROOT / "simulator" / "cpu_step_model.toml", path)
    before = tomllib.loads(path.read_text())
    result = command("--refit", str(path))
    assert result.returncode == 0, result.stderr
    assert "each form left one out" in result.stderr
    after = tomllib.loads(path.read_text())
    for key in ("decode_samples", "prefill_samples", "mixed_samples"):
        assert np.allclose(after[key], before[key], rtol=1e-5), key
    for key in ("machine", "command", "measured_at"):
        assert after[key] == before[key], key
    assert after["refitted"] == f"python tools/sim_check.py --refit {path}"
    model = StepModel.from_file(path)
    assert model.joining_row_decodes is sim_check.JOINING_ROW_DECODES
    assert model.sequence_form == "linear" if after["multi_row_s"] else model.sequence_form in ("sqrt", "log")
    refitted = calibrate.fit([calibrate.DecodeSample(*row) for row in after["decode_samples"]],
                             [calibrate.PrefillSample(*row) for row in after["prefill_samples"]], model.source,
                             [calibrate.MixedSample(*row) for row in after["mixed_samples"]], model.joining_row_decodes)
    assert model.step(1, 200, 1) == pytest.approx(refitted.model.step(1, 200, 1), rel=1e-5)
    # a file with no samples is refused by name
    path.write_text("overhead_s = 0.01\n")
    result = command("--refit", str(path))
    assert result.returncode == 2 and "no decode_samples, prefill_samples" in result.stderr


def test_decode_steps_are_read_off_token_times_once_every_row_has_joined() -> None:
    # Two rows sent together with 10-token prompts: row 0's first token at 1.0, then a step every 0.1 s;
    # row 1 joins at 1.3 (its first two tokens come from that one step) and both decode at 0.1 s steps
    # until row 0 ends at 1.8; row 1 goes on alone at 0.05 s steps.
    row0 = np.round(np.arange(1.0, 1.85, 0.1), 6)
    row1 = np.array([1.3, 1.3001, 1.4, 1.5, 1.6, 1.7, 1.8, 1.85, 1.9])
    samples = sim_check.decode_samples([row0, row1], prompt_tokens=10)
    assert [s.sequences for s in samples] == [2, 2, 2, 2, 2, 1, 1]
    assert [round(s.seconds, 3) for s in samples] == [0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05]
    # the first step: row 0 holds 10 + 4 tokens, row 1 10 + 2
    assert samples[0].kv_tokens == 26


def test_rows_whose_tokens_of_one_step_reach_the_client_apart_are_counted_in_that_step() -> None:
    # Two rows that joined together and end together; the runtime sends each step's responses one after
    # another, so row 0's tokens arrive 1 ms before row 1's: the last step still carries both rows.
    row0 = np.round(np.arange(1.0, 1.65, 0.1), 6)
    row1 = row0 + 0.001
    row1[0] = row0[0] + 0.0015  # the reference: its first token came last
    samples = sim_check.decode_samples([row0, row1], prompt_tokens=10)
    assert [s.sequences for s in samples] == [2] * 5
    assert samples[-1].kv_tokens == 2 * (10 + 6)


def test_the_table_gives_percentiles_ratio_and_the_20_percent_verdict() -> None:
    measured = {"TTFT": np.array([1.0, 2.0, 3.0]), "e2e": np.array([10.0, 10.0, 10.0])}
    simulated = {"TTFT": np.array([1.1, 2.1, 3.1]), "e2e": np.array([13.0, 13.0, 13.0])}
    rows = validation.rows("60%", 0.5, measured, simulated)
    assert [r.metric for r in rows] == ["TTFT p50", "TTFT p90", "e2e p50", "e2e p90"]
    assert rows[0].measured_s == 2.0 and rows[0].simulated_s == pytest.approx(2.1)
    assert rows[0].ratio == pytest.approx(1.05) and rows[0].within()
    assert rows[2].ratio == pytest.approx(1.3) and not rows[2].within()
    table = validation.table(rows)
    assert "| 60% | 0.5 | e2e p50 | 10.000 s | 13.000 s | 1.30 | NO |" in table
    assert "| 60% | 0.5 | TTFT p50 | 2.000 s | 2.100 s | 1.05 | yes |" in table
    with pytest.raises(ValueError, match="same requests"):
        validation.rows("light", 0.1, measured, {"TTFT": simulated["TTFT"][:2], "e2e": simulated["e2e"]})


def test_the_chunk_size_is_read_from_the_cpu_runtime() -> None:
    assert sim_check.chunk_tokens(ROOT / "model_repository" / "tensorrt_llm" / "cpu" / "1" / "model.py") == 64


def command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "sim_check.py"), *args], capture_output=True,
                          text=True)


def test_help_shows_examples() -> None:
    result = command("--help")
    assert result.returncode == 0
    assert "Examples:" in result.stdout and "--step-model" in result.stdout


def test_bad_input_is_refused_by_name(tmp_path) -> None:
    result = command("--loads", "0.2,lots")
    assert result.returncode == 2 and "--loads" in result.stderr
    result = command("--repository", str(tmp_path))
    assert result.returncode == 2 and "no CPU tensorrt_llm" in result.stderr


@pytest.mark.parametrize("separate", [True, False])
def test_the_mixed_steps_choose_how_a_prompt_chunk_and_decoding_add_up(separate: bool) -> None:
    truth = StepModel(**{**vars(TRUE), "separate_prefill": separate})
    decode, prefill = synthetic(noise_s=0.0)
    mixed = [calibrate.MixedSample(n, n * 500.0, 64, truth.step(n + 1, n * 500.0, n + 64, 64)) for n in (1, 3, 7)]
    result = calibrate.fit(decode, prefill, "synthetic", mixed)
    assert result.model.separate_prefill is separate
    chosen, other = ("separate", "max") if separate else ("max", "separate")
    assert result.mixed_rms_s[chosen] == pytest.approx(0.0, abs=1e-9)
    assert result.mixed_rms_s[other] > 0.001


def test_the_prompt_forwards_own_fixed_cost_beside_a_decode_forward_is_measured_not_the_steps_overhead() -> None:
    # the CPU runtime pays its per-step work once: a prompt chunk beside decoding rows adds less than a
    # lone prompt step's overhead (measured here: 32 ms against 59)
    truth = replace(TRUE, separate_prefill=True, prompt_forward_s=0.007)
    decode, prefill = synthetic(noise_s=0.0)
    mixed = [calibrate.MixedSample(n, n * 500.0, 64, truth.step(n + 1, n * 500.0, n + 64, 64)) for n in (1, 3, 7)]
    model = calibrate.fit(decode, prefill, "synthetic", mixed).model
    assert model.prompt_forward_s == pytest.approx(0.007)
    assert model.step(4, 1500.0, 3 + 64, 64) == pytest.approx(0.007 + 64 * TRUE.token_s + TRUE.step(3, 1500.0, 3))
    assert model.step(1, 0.0, 64, 64) == pytest.approx(TRUE.overhead_s + 64 * TRUE.token_s)  # a lone prompt


def test_mixed_steps_are_read_off_while_a_later_row_is_still_joining() -> None:
    # Two 128-token prompts (2 chunks each) sent together: A's prompt takes two steps (its first two tokens
    # at 0.6), then B's two chunks go in beside A's decoding (steps ending 0.95 and 1.3, B joining with the
    # second); only the first of those is a step with a chunk and no joining row.
    a = np.array([0.6, 0.6001, 0.95, 1.3, 1.4, 1.5])
    b = np.array([1.3, 1.3001, 1.4, 1.5, 1.6, 1.7])
    samples = sim_check.mixed_samples([a, b], prompt_tokens=128, chunk=64)
    assert len(samples) == 1
    assert (samples[0].decoding, samples[0].kv_tokens, samples[0].prompt_tokens) == (1, 130.0, 64)
    assert samples[0].seconds == pytest.approx(0.3499)
    assert sim_check.mixed_samples([a, b], prompt_tokens=32, chunk=64) == []


def test_decode_steps_are_reduced_to_medians_per_batch_size() -> None:
    # one stalled step (a busy machine) does not move the median
    steps = [calibrate.DecodeSample(2, kv, t) for kv, t in ((100, 0.1), (102, 0.1), (104, 0.9))]
    steps.append(calibrate.DecodeSample(1, 60, 0.05))
    assert calibrate.medians(steps) == [calibrate.DecodeSample(1, 60.0, 0.05), calibrate.DecodeSample(2, 102.0, 0.1)]


def test_every_load_replays_the_same_arrivals_at_its_own_rate() -> None:
    # one sequence at a mean of 1 request/s, each load dividing it by its rate: the same requests, in the
    # same order and proportions of gaps; seeded, so a rerun replays it again
    arrivals = sim_check.arrival_sequence(None, 2000, seed=7)
    assert np.array_equal(arrivals, sim_check.arrival_sequence(None, 2000, seed=7))
    assert 2000 / arrivals[-1] == pytest.approx(1.0, rel=0.1)
    from_trace = sim_check.arrival_sequence("code", 50, seed=0)
    assert len(from_trace) == 50 and (np.diff(from_trace) >= 0).all()
    with pytest.raises(sim_check.CheckError, match="fewer than --requests"):
        sim_check.arrival_sequence("code", 10**9, seed=0)


class StandInStreams:
    """Stands in for the gRPC streams to tritonserver (a fast test has none): answers each run of requests
    as the CPU runtime's step loop does, one prompt at a time in 64-token forwards beside the rows decoding,
    a joining row decoding in its joining step, every step timed by `truth`."""

    def __init__(self, truth: StepModel):
        self.truth = truth
        self.sent: dict[str, float] = {}
        self.tokens: dict[str, list[float]] = {}
        self.pending: list[tuple[str, int, int]] = []
        self.clock = 0.0

    def send(self, prompt: np.ndarray, output_tokens: int) -> str:
        request = str(len(self.sent) + 1)
        self.sent[request] = self.clock
        self.tokens[request] = []
        self.pending.append((request, len(prompt), output_tokens))
        return request

    def wait(self, request_ids: list[str]) -> None:
        truth, t = self.truth, self.clock
        queue, self.pending = self.pending, []
        running: dict[str, int] = {}  # request: tokens still to come
        context: dict[str, int] = {}
        joining: list | None = None  # [request, prompt tokens, answer tokens, fed]
        while queue or running or joining:
            if joining is None and queue:
                joining = [*queue.pop(0), 0]
            chunk, joined = 0, None
            if joining:
                chunk = min(64, joining[1] - joining[3])
                joining[3] += chunk
                if joining[3] == joining[1]:
                    joined, joining = joining, None
            rows = list(running) + ([joined[0]] if joined and joined[2] > 1 else [])
            kv = sum(context.values()) + (joined[1] if joined else 0)
            t += truth.overhead_s + truth.token_s * chunk if chunk else 0.0
            t += truth.step(len(rows), kv, len(rows)) if rows else 0.0
            if joined:
                request, prompt_tokens, answer, _ = joined
                self.tokens[request].append(t + truth.request_latency_s)
                running[request], context[request] = answer - 1, prompt_tokens + 1
            # the step's responses go out one after another: the last row's (the joining row's second token
            # where one joined) 0.1 ms after the others
            for request in rows:
                self.tokens[request].append(t + truth.request_latency_s + 1e-4 * (request in rows[-1:]))
                running[request] -= 1
                context[request] += 1
                if not running[request]:
                    del running[request], context[request]
            for request in [r for r, left in running.items() if not left]:  # a one-token answer, done as it joined
                del running[request], context[request]
        self.clock = t + 1.0


def test_the_calibration_path_with_a_stand_in_server_writes_a_model_close_to_the_truth(tmp_path) -> None:
    # measure_steps -> fit -> the file -> the simulator's StepModel, as --write-step-model runs them, on a
    # stand-in for the server (a mock: the real run needs tritonserver and a quiet machine)
    truth = replace(ONE_ROW, separate_prefill=True)
    engine = sim_check.Engine(max_batch_size=8, max_input_len=512, max_output_len=64, chunk_tokens=64, end_id=2,
                              vocab_size=1000)
    said: list[str] = []
    decode, prefill, mixed = sim_check.measure_steps(StandInStreams(truth), engine, np.random.default_rng(0),
                                                     said.append)
    assert any("first two tokens 0.1 ms apart" in line for line in said)
    result = calibrate.fit(decode, prefill, "stand-in", mixed, sim_check.JOINING_ROW_DECODES)
    path = tmp_path / "steps.toml"
    calibrate.write(path, result, machine="stand-in", command="test", measured_at="now", decode=decode,
                    prefill=prefill, mixed=mixed)
    model = StepModel.from_file(path)
    assert model.separate_prefill and model.joining_row_decodes and model.sequence_form == "linear"
    for name in COEFFICIENTS:
        assert getattr(model, name) == pytest.approx(getattr(truth, name), rel=0.01), name
