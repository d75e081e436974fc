"""tensorrt_llm stand-in: the C++ TensorRT-LLM backend's tensors, tokens at (almost) no cost.

No model and no sleep (unless per_token_delay_us is set): every request gets request_output_len ids
taken from a fixed passage's token ids (token_ids.json), cycled, starting at seed % len, so a client
knows the exact ids and text each stream must produce (tools/harness/standin.py: expected_ids). Responses
are exactly what model_repository/tensorrt_llm/cpu sends: streaming, one response per token with
output_ids [1, 1, 1] and sequence_length [1, 1], then an empty response with the FINAL flag;
otherwise one response with output_ids [rows, 1, tokens] and sequence_length [rows, 1].

It declares the CPU runtime's inputs for structured output, log probabilities and several sequences
(so the two configs stay equal) but has no model to do any of that: a request that asks for one is
refused by name rather than answered as if it had been honoured.

Batching is in flight, as in the C++ backend: execute() only hands its requests to the decode loop
(a thread) and returns, and each step of that loop sends one token to every active request, so a
request that arrives while others stream joins at the next step. Cancellation is checked every 16
steps.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
CANCEL_CHECK_EVERY = 16  # is_cancelled() is a round trip to tritonserver; once per step would cost more than a token
# Inputs that ask for what only a model can give, with the value that asks for nothing.
NOT_HONOURED = {"guided_decoding_guide_type": None, "guided_decoding_guide": None, "return_log_probs": False,
                "num_top_log_probs": 0, "num_return_sequences": 1}


def optional_scalar(request, name: str, default: int) -> int:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else int(tensor.as_numpy().reshape(-1)[0])


class Stream:
    """One request: the ids it will get and where they go."""

    def __init__(self, request, cycle: list[int], exclude_input_default: bool):
        self.request = request
        self.sender = request.get_response_sender()
        input_ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "input_lengths").as_numpy().reshape(-1)
        wanted = int(pb_utils.get_input_tensor_by_name(request, "request_output_len").as_numpy().reshape(-1)[0])
        if wanted < 1:
            raise ValueError(f"request_output_len must be at least 1, got {wanted}")
        for name, nothing in NOT_HONOURED.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None and any(value not in (nothing, b"", "") for value in tensor.as_numpy().reshape(-1)):
                raise ValueError(f"{name}: the stand-in engine has no model to honour it")
        self.rows = input_ids.shape[0]
        self.prompts = [input_ids[row, :int(lengths[row])].tolist() for row in range(self.rows)]
        self.streaming = bool(optional_scalar(request, "streaming", 0))
        if self.streaming and self.rows > 1:
            raise ValueError(f"streaming needs one prompt per request; got a batch of {self.rows}")
        self.exclude_input = bool(optional_scalar(request, "exclude_input_in_output", int(exclude_input_default)))
        start = optional_scalar(request, "seed", 0) % len(cycle)
        self.ids = [cycle[(start + i) % len(cycle)] for i in range(wanted)]
        self.sent = 0
        self.done = False

    def step(self) -> None:
        """Emit the next token (streaming), or everything once it is due (not streaming)."""
        if self.streaming:
            self.sender.send(pb_utils.InferenceResponse([
                pb_utils.Tensor("output_ids", np.array([[[self.ids[self.sent]]]], dtype=np.int32)),
                pb_utils.Tensor("sequence_length", np.array([[1]], dtype=np.int32)),
            ]))
        self.sent += 1
        if self.sent == len(self.ids):
            self.finish()

    def finish(self) -> None:
        self.done = True
        if self.streaming:
            self.sender.send(flags=FINAL)
            return
        ids = self.ids[:self.sent]  # fewer than asked for when the request was cancelled
        outputs = [ids if self.exclude_input else prompt + ids for prompt in self.prompts]
        width = max(len(o) for o in outputs)
        ids = np.array([[o + [0] * (width - len(o))] for o in outputs], dtype=np.int32)
        lengths = np.array([[len(o)] for o in outputs], dtype=np.int32)
        self.sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("output_ids", ids),
                                                     pb_utils.Tensor("sequence_length", lengths)]), flags=FINAL)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.cycle = json.loads((version_dir / parameters["token_ids_file"]).read_text())
        if not self.cycle:
            raise ValueError(f"{parameters['token_ids_file']} has no token ids")
        self.delay = int(parameters.get("per_token_delay_us", "0")) / 1e6
        self.exclude_input_default = parameters.get("exclude_input_in_output", "true").lower() == "true"
        self.arrivals: queue.Queue[Stream | None] = queue.Queue()
        self.loop = threading.Thread(target=self.decode, name="standin-decode", daemon=True)
        self.loop.start()

    def execute(self, requests):
        for request in requests:
            try:
                self.arrivals.put(Stream(request, self.cycle, self.exclude_input_default))
            except (ValueError, AttributeError) as error:  # AttributeError: a required input is missing
                request.get_response_sender().send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))), flags=FINAL)
        return None

    def decode(self) -> None:
        """The engine's decode loop: every active request gets one token per step."""
        active: list[Stream] = []
        steps = 0
        while True:
            if not active:
                first = self.arrivals.get()  # idle: wait, costing nothing
                if first is None:
                    return
                active.append(first)
            while not self.arrivals.empty():
                arrival = self.arrivals.get_nowait()
                if arrival is None:
                    return
                active.append(arrival)
            if self.delay:
                time.sleep(self.delay)
            for stream in active:
                try:
                    stream.step()
                except Exception as error:  # noqa: BLE001 - one broken request must not stop the loop for all
                    pb_utils.Logger.log_error(f"stand-in engine: dropping a request: {error!r}")
                    stream.done = True
            steps += 1
            if steps % CANCEL_CHECK_EVERY == 0:
                for stream in active:
                    if not stream.done and stream.request.is_cancelled():
                        stream.finish()
            active = [stream for stream in active if not stream.done]

    def finalize(self):
        self.arrivals.put(None)
        self.loop.join(10)
