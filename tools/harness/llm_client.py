"""A small client for the ensemble API over gRPC (streaming) and HTTP (generate, generate_stream).

Input dtypes come from the server's model metadata, so the client never restates the ensemble's
tensor contract. Used by the tests and by tools/bench.py; also a worked example for API users.
"""

from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass, field

import numpy as np
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


@dataclass
class Answer:
    pieces: list[str] = field(default_factory=list)
    error: str | None = None
    piece_times: list[float] = field(default_factory=list)  # seconds since the request was sent
    rows: list[str] = field(default_factory=list)  # every row of the last response (batched requests)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class GrpcLlmClient:
    """One gRPC stream; requests on it are answered in order."""

    def __init__(self, url: str, model: str = "ensemble"):
        self.client = grpcclient.InferenceServerClient(url)
        self.model = model
        metadata = self.client.get_model_metadata(model, as_json=True)
        self.dtypes = {item["name"]: item["datatype"] for item in metadata["inputs"]}
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()

    def inputs(self, values: dict[str, object]) -> list[grpcclient.InferInput]:
        tensors = []
        for name, value in values.items():
            datatype = self.dtypes.get(name, "BYTES")
            array = np.asarray(value, dtype=object if datatype == "BYTES" else triton_to_np_dtype(datatype))
            if array.ndim < 2:
                array = array.reshape(1, -1)
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors

    def send(self, values: dict[str, object], output: str = "text_output") -> Answer:
        """Send one request and collect every response until the final one."""
        answer = Answer()
        began = time.monotonic()
        self.client.async_stream_infer(self.model, self.inputs(values),
                                       outputs=[grpcclient.InferRequestedOutput(output)],
                                       enable_empty_final_response=True)
        while True:
            result, error = self.responses.get(timeout=300)
            if error is not None:
                answer.error = str(error.message() if isinstance(error, InferenceServerException) else error)
                return answer
            array = result.as_numpy(output)
            if array is not None and array.size:
                if output == "text_output":
                    answer.rows = [item.decode("utf-8") for item in array.reshape(-1)]
                    answer.pieces.append(answer.rows[0])
                else:
                    answer.pieces.append(array)
                answer.piece_times.append(time.monotonic() - began)
            if result.get_response().parameters["triton_final_response"].bool_param:
                return answer


def http_generate(http_url: str, payload: dict, model: str = "ensemble") -> tuple[int, dict]:
    response = requests.post(f"http://{http_url}/v2/models/{model}/generate", json=payload, timeout=300)
    return response.status_code, response.json()


def http_generate_stream(http_url: str, payload: dict, model: str = "ensemble") -> Answer:
    """Server-sent events from generate_stream; an error event ends the answer."""
    answer = Answer()
    began = time.monotonic()
    with requests.post(f"http://{http_url}/v2/models/{model}/generate_stream", json=payload, stream=True,
                       timeout=300) as response:
        for line in response.iter_lines(decode_unicode=False):
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[len(b"data:"):])
            if "error" in event:
                answer.error = event["error"]
                break
            answer.pieces.append(event["text_output"])
            answer.piece_times.append(time.monotonic() - began)
    return answer


def http_events(http_url: str, payload: dict, model: str = "tensorrt_llm") -> list[dict]:
    """Every event of one generate_stream request, outputs as Triton writes them (a one-element tensor as a
    bare value); a request refused before its first response is one event with "error" (and HTTP 400)."""
    with requests.post(f"http://{http_url}/v2/models/{model}/generate_stream", json=payload, stream=True,
                       timeout=300) as response:
        return [json.loads(line[len(b"data:"):]) for line in response.iter_lines() if line.startswith(b"data:")]
