"""The gateway with the real clients, installed from PyPI, run as their users run them: NVIDIA's aiperf
and vLLM's guidellm (each a few requests end to end, their own reports read back), LangChain's
`ChatOpenAI` and LiteLLM's SDK. What clients that cannot run here send is replayed from
tests/fixtures/clients/ in tests/test_gateway.py.

The clients talk to one gateway (`python -m gateway`) on the session's tritonserver; it serves the
build with a generation_config.json that recommends its sampling (test_gateway's `recommending`),
because LangChain and LiteLLM send no max_tokens by default and the 135M model sampled at OpenAI's
default temperature runs on to max_output_len (minutes on this CPU). aiperf and guidellm live in
.venv-clients (`make clients`; tests/support/clients-requirements.txt says why), LangChain in .venv.
aiperf's own processes take most of a 2-core machine: these runs prove compatibility, not latency.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT
from langchain_openai import ChatOpenAI
from test_gateway import MODEL, Gateway, recommending  # noqa: F401 (recommending: a fixture, imported to be found)

pytestmark = pytest.mark.triton

CLIENTS = ROOT / ".venv-clients" / "bin"
QUESTION = "What is the capital of France?"
# A few short requests: enough to see every request answered, not a benchmark.
REQUESTS, PROMPT_TOKENS, OUTPUT_TOKENS = 3, 16, 8


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest) -> Gateway:
    """test_gateway's `recommending` gateway, this module's own instance."""
    return request.getfixturevalue("recommending")


@pytest.fixture(scope="module")
def clients() -> Path:
    if not (CLIENTS / "python").is_file():
        pytest.skip(f"the benchmark clients are not installed at {CLIENTS.parent}: run `make clients`")
    return CLIENTS


def tokenizer_dir(triton) -> Path:
    """The model's tokenizer files in the built repository: the tools count tokens with them, and the
    hub, where they would look the model's name up, is not reachable."""
    return triton.repository / "ensemble" / "1" / "tokenizer"


def offline(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a client process: its own HOME (caches, logs), no telemetry, and the
    Hugging Face hub pointed at a closed local port, so that a lookup fails at once instead of leaving."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
            "DO_NOT_TRACK": "1", "HF_ENDPOINT": "http://127.0.0.1:9", **extra}


def run(command: list[str], env: dict[str, str], cwd: Path, timeout: int = 300) -> str:
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_aiperf_streams_chat_and_every_request_gets_the_output_length_it_asked(clients, triton, served, tmp_path):
    """aiperf 0.13.0's chat endpoint, streaming, with `--extra-inputs ignore_eos:true`: what aiperf's own
    README tells users to pass for fixed output lengths. Its exported results are read back."""
    artifacts = tmp_path / "artifacts"
    command = [str(clients / "aiperf"), "profile", "--model", MODEL, "--url", served.url,
               "--endpoint-type", "chat", "--streaming", "--tokenizer", str(tokenizer_dir(triton)),
               "--request-count", str(REQUESTS), "--concurrency", "1", "--isl", str(PROMPT_TOKENS),
               "--osl", str(OUTPUT_TOKENS), "--extra-inputs", "ignore_eos:true",
               # one worker and one record processor: the machine has two cores; no UI, no /metrics scrape,
               # no GPU telemetry (nothing here has a GPU)
               "--workers-max", "1", "--record-processors", "1", "--ui", "none", "--no-server-metrics",
               "--no-gpu-telemetry", "--artifact-dir", str(artifacts)]
    # No HF_HUB_OFFLINE: in offline mode aiperf 0.13.0 looks a tokenizer up only in the hub's cache,
    # even a local folder (aiperf/common/tokenizer.py, Tokenizer._load_from_hub -> _resolve_local_snapshot).
    run(command, offline(tmp_path), tmp_path)
    report = json.loads((artifacts / "profile_export_aiperf.json").read_text())
    assert report["request_count"]["avg"] == REQUESTS and report["request_error_rate"]["avg"] == 0, report
    assert not report["error_summary"], report["error_summary"]
    # ignore_eos honoured: every answer is exactly the length asked for, by aiperf's count and the server's
    for metric in ("output_sequence_length", "usage_completion_tokens"):
        assert report[metric]["min"] == report[metric]["max"] == OUTPUT_TOKENS, (metric, report[metric])
    assert report["time_to_first_token"]["min"] > 0
    sent = [payload for session in json.loads((artifacts / "inputs.json").read_text())["data"]
            for payload in session["payloads"]]
    assert len(sent) == REQUESTS and all(p["ignore_eos"] is True and p["stream"] is True for p in sent), sent


def test_guidellm_benchmarks_with_its_defaults_and_every_request_succeeds(clients, triton, served, tmp_path):
    """guidellm 0.8.1 with its default backend settings: GET /health before it starts, then streamed
    chat completions with stream_options.continuous_usage_stats, and ignore_eos for synthetic data."""
    report_path = tmp_path / "benchmarks.json"
    command = [str(clients / "guidellm"), "run",
               "--backend", f"kind=openai_http,target={served.url}",
               "--profile", "kind=synchronous", "--constraint", f"kind=max_requests,count={REQUESTS}",
               "--data", f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},output_tokens={OUTPUT_TOKENS}",
               "--tokenizer", f"kind=huggingface_auto,model={tokenizer_dir(triton)}",
               "--output", f"kind=json,path={report_path}", "--disable-console-interactive"]
    run(command, offline(tmp_path, HF_HUB_OFFLINE="1"), tmp_path)
    benchmark = json.loads(report_path.read_text())["benchmarks"][0]
    assert benchmark["metrics"]["request_totals"] == {"successful": REQUESTS, "errored": 0, "incomplete": 0,
                                                      "total": REQUESTS}, benchmark["metrics"]["request_totals"]
    for request in benchmark["requests"]["successful"]:
        body = json.loads(request["request_args"])["body"]
        assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}, body
        assert body["ignore_eos"] is True and body["model"] == MODEL, body
        assert request["output"] and request["output_tokens"] == OUTPUT_TOKENS, request["output"]


@pytest.fixture(scope="module")
def chat_model(served: Gateway) -> ChatOpenAI:
    """ChatOpenAI as LangChain's docs show it for an OpenAI-compatible server: a base_url and a key."""
    return ChatOpenAI(model=MODEL, base_url=f"{served.url}/v1", api_key="unused")


def test_langchain_chat_openai_invoke(chat_model):
    message = chat_model.invoke(QUESTION)
    assert message.content.strip()
    assert message.response_metadata["finish_reason"] in ("stop", "length")
    assert message.response_metadata["model_name"] == MODEL
    usage = message.usage_metadata
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_langchain_chat_openai_stream(chat_model):
    chunks = list(chat_model.stream(QUESTION))
    assert "".join(chunk.content for chunk in chunks).strip()
    finishes = [c.response_metadata.get("finish_reason") for c in chunks if c.response_metadata.get("finish_reason")]
    assert finishes in (["stop"], ["length"]), finishes


def test_litellm_completion_whole_streamed_and_text_completion(clients, served, tmp_path):
    out = run([str(clients / "python"), str(ROOT / "tests" / "support" / "litellm_calls.py"),
               f"{served.url}/v1", MODEL], offline(tmp_path), tmp_path)
    results = json.loads(out)
    assert set(results) == {"completion", "completion_stream", "text_completion"}
    for call, result in results.items():
        assert result["text"].strip() and result["finish_reason"] in ("stop", "length"), (call, result)
        usage = result["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, (call, usage)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], (call, usage)
