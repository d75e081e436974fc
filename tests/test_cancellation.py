"""A client that goes away stops the generation behind it, on the real tritonserver.

The CPU runtime decodes a batch to the end before it takes the next one only when nothing is
cancelled; so if a cancelled 1000-token request kept decoding, a short request sent right after it
would wait for it (tens of seconds here), and the model would log no cancellation.

A non-streamed request needs the ensemble to stream from tensorrt_llm all the same: Triton's HTTP
frontend notices a closed loopback connection only once the call's first response is written
(tools/policy/upstream_facts.toml, triton.http_cancel_on_disconnect), and a non-streamed call has one, at the end.
"""

from __future__ import annotations

import queue
import re
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from conftest import wait_until
from harness.llm_client import GrpcLlmClient

pytestmark = pytest.mark.triton

CANCELLED_LINE = re.compile(r"tensorrt_llm: cancelled request '[^']*' after (\d+) tokens")
LONG = {"text_input": "Write a very long story about a dragon.", "max_tokens": 1000, "min_tokens": 1000,
        "stream": True}


def start_long_grpc_stream(url: str, stream: bool = True) -> tuple[grpcclient.InferenceServerClient, queue.Queue]:
    client = grpcclient.InferenceServerClient(url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    inputs = []
    for name, array in [("text_input", np.array([[LONG["text_input"]]], dtype=object)),
                        ("max_tokens", np.array([[LONG["max_tokens"]]], dtype=np.int32)),
                        ("min_tokens", np.array([[LONG["min_tokens"]]], dtype=np.int32)),
                        ("stream", np.array([[stream]]))]:
        tensor = grpcclient.InferInput(name, list(array.shape), grpcclient.np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    client.async_stream_infer("ensemble", inputs, enable_empty_final_response=True)
    return client, responses


def short_answer_seconds(triton) -> float:
    began = time.monotonic()
    client = GrpcLlmClient(triton.grpc)
    answer = client.send({"text_input": "Say hi.", "max_tokens": 4})
    client.close()
    assert answer.error is None and answer.text
    return time.monotonic() - began


def cancelled_lines(triton) -> list[int]:
    return [int(n) for n in CANCELLED_LINE.findall(triton.log.read_text())]


def admitted(triton) -> int:
    """tensorrt_llm requests the CPU runtime has taken into its batch: Triton counts a request of this
    decoupled model a success when its execute() returns, which is once the request is in the batch."""
    text = requests.get(triton.metrics_url, timeout=10).text
    return int(float(re.search(r'^nv_inference_request_success\{model="tensorrt_llm",version="1"\} (\S+)$', text,
                               re.MULTILINE)[1]))


def wait_for_cancellation(triton, before: int, timeout: float = 10.0) -> int:
    """Tokens the cancelled sequence got before the CPU model dropped it, from the model's own log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = cancelled_lines(triton)
        if len(lines) > before:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError(f"tensorrt_llm logged no cancellation within {timeout} s:\n{triton.log.read_text()[-3000:]}")


def test_cancelled_grpc_stream_stops_decoding_and_frees_the_batch(triton):
    before = len(cancelled_lines(triton))
    client, responses = start_long_grpc_stream(triton.grpc)
    for _ in range(3):
        result, error = responses.get(timeout=60)
        assert error is None, error
    client.stop_stream(cancel_requests=True)
    client.close()
    tokens = wait_for_cancellation(triton, before)
    assert tokens < 100, f"the cancelled sequence decoded {tokens} tokens"
    assert short_answer_seconds(triton) < 10


def test_dropped_http_generate_stream_stops_decoding(triton):
    before = len(cancelled_lines(triton))
    with requests.post(f"http://{triton.http}/v2/models/ensemble/generate_stream", json=LONG, stream=True,
                       timeout=60) as response:
        events = 0
        for line in response.iter_lines():
            events += line.startswith(b"data:")
            if events == 3:
                break
    tokens = wait_for_cancellation(triton, before)
    assert tokens < 100, f"the cancelled sequence decoded {tokens} tokens"
    assert short_answer_seconds(triton) < 10


def test_cancelled_non_streamed_grpc_request_stops_decoding(triton):
    before, taken = len(cancelled_lines(triton)), admitted(triton)
    client, responses = start_long_grpc_stream(triton.grpc, stream=False)
    wait_until(lambda: admitted(triton) > taken, 30, "tensorrt_llm taking the request into its batch")
    time.sleep(1.0)  # decoding, and the client has nothing yet: it gets one response, at the end
    assert responses.empty()
    client.stop_stream(cancel_requests=True)
    client.close()
    tokens = wait_for_cancellation(triton, before)
    assert 0 < tokens < LONG["max_tokens"] // 2, f"the cancelled sequence decoded {tokens} tokens"
    assert short_answer_seconds(triton) < 10


def test_non_streamed_request_cancelled_while_queued_never_decodes_to_max_tokens(triton):
    batch = int(re.search(r"^max_batch_size: (\d+)$", (triton.repository / "tensorrt_llm" / "config.pbtxt").read_text(),
                          re.MULTILINE)[1])
    before = len(cancelled_lines(triton))
    fillers = [start_long_grpc_stream(triton.grpc) for _ in range(batch)]
    try:
        for _, responses in fillers:
            result, error = responses.get(timeout=60)
            assert error is None, error
        taken = admitted(triton)
        client, _ = start_long_grpc_stream(triton.grpc, stream=False)
        time.sleep(1.0)  # preprocessed; its tensorrt_llm request waits for a place in the full batch
        assert admitted(triton) == taken, "the batch was not full: the request was not queued"
        client.stop_stream(cancel_requests=True)
        client.close()
        time.sleep(0.5)  # the ensemble sees the cancellation (every 50 ms) and closes its loopback call
    finally:
        for filler, _ in fillers:
            filler.stop_stream(cancel_requests=True)
            filler.close()
    # the batch's cancellations, then the queued request's, once it has joined the batch: one line each
    wait_until(lambda: len(cancelled_lines(triton)) >= before + batch + 1, 30,
               f"{batch + 1} cancellations (the queued request's last)")
    tokens = cancelled_lines(triton)[before:]
    assert len(tokens) == batch + 1 and max(tokens) < LONG["max_tokens"], tokens
    assert short_answer_seconds(triton) < 10
