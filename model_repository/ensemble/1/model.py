"""ensemble: text in, text out, over preprocessing -> tensorrt_llm -> postprocessing.

Each request runs on a worker thread so the model can take the next one while tensorrt_llm batches
them. Streams are detokenized incrementally (streamed_text.py); at the end of a stream the text from
postprocessing settles the tail, so the streamed pieces always add up to the non-streamed answer.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils
from model_params import load_config, load_tokenizer, parameter
from streamed_text import StreamedText

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

PREPROCESSING_INPUTS = {
    "text_input": "QUERY", "max_tokens": "REQUEST_OUTPUT_LEN", "bad_words": "BAD_WORDS_DICT",
    "stop_words": "STOP_WORDS_DICT", "end_id": "END_ID", "pad_id": "PAD_ID",
}
PREPROCESSING_OUTPUTS = {
    "INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths", "REQUEST_OUTPUT_LEN": "request_output_len",
    "BAD_WORDS_IDS": "bad_words_list", "STOP_WORDS_IDS": "stop_words_list", "OUT_END_ID": "end_id",
    "OUT_PAD_ID": "pad_id",
}
SAMPLING_INPUTS = {
    "top_k": "runtime_top_k", "top_p": "runtime_top_p", "temperature": "temperature",
    "length_penalty": "len_penalty", "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty", "min_tokens": "min_tokens",
    "random_seed": "seed", "seed": "seed", "beam_width": "beam_width",
    "exclude_input_in_output": "exclude_input_in_output",
}

# The text-in, text-out llmapi model: what each of our inputs is called there.
LLMAPI_INPUTS = {
    "max_tokens": "sampling_param_max_tokens", "temperature": "sampling_param_temperature",
    "top_k": "sampling_param_top_k", "top_p": "sampling_param_top_p",
    "presence_penalty": "sampling_param_presence_penalty", "frequency_penalty": "sampling_param_frequency_penalty",
    "random_seed": "sampling_param_seed", "seed": "sampling_param_seed", "stop_words": "sampling_param_stop",
    "exclude_input_in_output": "sampling_param_exclude_input_from_output",
}
LLMAPI_UNSUPPORTED = ("bad_words", "end_id", "pad_id", "length_penalty", "repetition_penalty", "min_tokens",
                      "beam_width")


class RequestError(ValueError):
    """A step refused the request; the message goes to the client."""


def text_tensor(texts: list[str]) -> pb_utils.Tensor:
    return pb_utils.Tensor("text_output", np.array([[t.encode("utf-8")] for t in texts], dtype=object))


def checked(response) -> object:
    if response.has_error():
        raise RequestError(response.error().message())
    return response


class TritonPythonModel:
    def initialize(self, args):
        config, version_dir = load_config(args)
        self.tokenizer = load_tokenizer(config, version_dir)
        self.skip_special_tokens = parameter(config, "skip_special_tokens", bool)
        concurrent = parameter(config, "max_concurrent_requests", int)
        self.workers = ThreadPoolExecutor(max_workers=concurrent)
        # execute() blocks while every worker is busy, so the backlog stays in Triton's queue, where
        # the pending-request metric (and so the autoscaler) can see it.
        self.slots = threading.BoundedSemaphore(concurrent)
        self.text_in_text_out = parameter(config, "tensorrt_llm_inputs", str) == "text"

    def execute(self, requests):
        for request in requests:
            self.slots.acquire()
            self.workers.submit(self.serve, request)
        return None

    def finalize(self):
        self.workers.shutdown(wait=True)

    def serve(self, request) -> None:
        try:
            self.answer(request)
        finally:
            self.slots.release()

    def answer(self, request) -> None:
        sender = request.get_response_sender()
        try:
            stream_tensor = pb_utils.get_input_tensor_by_name(request, "stream")
            stream = bool(stream_tensor.as_numpy().reshape(-1)[0]) if stream_tensor is not None else False
            rows = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().shape[0]
            if stream and rows > 1:
                raise RequestError(f"stream=true needs one text_input per request; got a batch of {rows}")
            if self.text_in_text_out:
                self.text_rows(request, sender, rows, stream)
                return
            if stream:
                self.stream_row(request, sender)
                return
            # the rows of one request run side by side, so tensorrt_llm batches them
            with ThreadPoolExecutor(max_workers=rows) as row_workers:
                texts = list(row_workers.map(lambda row: self.decode(self.generate_ids(request, row)), range(rows)))
            sender.send(pb_utils.InferenceResponse([text_tensor(texts)]), flags=FINAL)
        except RequestError as error:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))), flags=FINAL)
        except Exception as error:  # a bug must still end the request, or the client waits forever
            pb_utils.Logger.log_error(f"ensemble: {error!r}")
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"internal error: {error!r}")),
                        flags=FINAL)

    def row_inputs(self, request, names: dict[str, str], row: int) -> list[pb_utils.Tensor]:
        tensors = []
        for ours, theirs in names.items():
            tensor = pb_utils.get_input_tensor_by_name(request, ours)
            if tensor is not None:
                tensors.append(pb_utils.Tensor(theirs, tensor.as_numpy()[row:row + 1]))
        return tensors

    def tensorrt_llm_request(self, request, row: int, stream: bool) -> pb_utils.InferenceRequest:
        preprocessed = checked(pb_utils.InferenceRequest(
            model_name="preprocessing", inputs=self.row_inputs(request, PREPROCESSING_INPUTS, row),
            requested_output_names=list(PREPROCESSING_OUTPUTS)).exec())
        inputs = [pb_utils.Tensor(theirs, pb_utils.get_output_tensor_by_name(preprocessed, ours).as_numpy())
                  for ours, theirs in PREPROCESSING_OUTPUTS.items()]
        inputs += self.row_inputs(request, SAMPLING_INPUTS, row)
        inputs.append(pb_utils.Tensor("streaming", np.array([[stream]], dtype=bool)))
        return pb_utils.InferenceRequest(model_name="tensorrt_llm", inputs=inputs,
                                         requested_output_names=["output_ids", "sequence_length"])

    @staticmethod
    def new_ids(response) -> list[int]:
        output_ids = pb_utils.get_output_tensor_by_name(response, "output_ids")
        if output_ids is None:  # the empty response that carries only the final flag
            return []
        length = int(pb_utils.get_output_tensor_by_name(response, "sequence_length").as_numpy().reshape(-1)[0])
        return output_ids.as_numpy().reshape(-1)[:length].tolist()

    def generate_ids(self, request, row: int) -> list[int]:
        ids: list[int] = []
        for response in self.tensorrt_llm_request(request, row, stream=False).exec(decoupled=True):
            ids += self.new_ids(checked(response))
        return ids

    def decode(self, ids: list[int]) -> str:
        response = checked(pb_utils.InferenceRequest(
            model_name="postprocessing", requested_output_names=["OUTPUT"],
            inputs=[pb_utils.Tensor("TOKENS_BATCH", np.array([[ids]], dtype=np.int32)),
                    pb_utils.Tensor("SEQUENCE_LENGTH", np.array([[len(ids)]], dtype=np.int32))]).exec())
        return pb_utils.get_output_tensor_by_name(response, "OUTPUT").as_numpy().reshape(-1)[0].decode("utf-8")

    def stream_row(self, request, sender) -> None:
        text = StreamedText(self.tokenizer, self.skip_special_tokens)
        for response in self.tensorrt_llm_request(request, 0, stream=True).exec(decoupled=True):
            piece = text.add(self.new_ids(checked(response)))
            if piece:
                sender.send(pb_utils.InferenceResponse([text_tensor([piece])]))
        try:
            tail = text.tail(self.decode(text.ids))
        except ValueError as error:
            raise RequestError(f"internal error: {error}") from None
        if tail:
            sender.send(pb_utils.InferenceResponse([text_tensor([tail])]), flags=FINAL)
        else:
            sender.send(flags=FINAL)

    def llmapi_request(self, request, row: int, stream: bool) -> pb_utils.InferenceRequest:
        for name in LLMAPI_UNSUPPORTED:
            if pb_utils.get_input_tensor_by_name(request, name) is not None:
                raise RequestError(f"{name} is not supported by the llmapi runtime")
        text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()[row]
        if not text[0].strip():
            raise RequestError("text_input is empty; send the prompt text")
        max_tokens = int(pb_utils.get_input_tensor_by_name(request, "max_tokens").as_numpy()[row][0])
        if max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {max_tokens}")
        # NVIDIA's llmapi model has max_batch_size 0: its tensors carry no batch dimension.
        inputs = [pb_utils.Tensor("text_input", text), pb_utils.Tensor("streaming", np.array([stream], dtype=bool))]
        for ours, theirs in LLMAPI_INPUTS.items():
            tensor = pb_utils.get_input_tensor_by_name(request, ours)
            if tensor is not None:
                inputs.append(pb_utils.Tensor(theirs, tensor.as_numpy()[row]))
        return pb_utils.InferenceRequest(model_name="tensorrt_llm", inputs=inputs,
                                         requested_output_names=["text_output"])

    def text_rows(self, request, sender, rows: int, stream: bool) -> None:
        """The llmapi model already streams text deltas (its model.py makes them so): pass them on."""
        texts = []
        for row in range(rows):
            pieces = []
            for response in self.llmapi_request(request, row, stream).exec(decoupled=True):
                output = pb_utils.get_output_tensor_by_name(checked(response), "text_output")
                piece = output.as_numpy().reshape(-1)[0].decode("utf-8") if output is not None else ""
                if stream and piece:
                    sender.send(pb_utils.InferenceResponse([text_tensor([piece])]))
                pieces.append(piece)
            texts.append("".join(pieces))
        if stream:
            sender.send(flags=FINAL)
        else:
            sender.send(pb_utils.InferenceResponse([text_tensor(texts)]), flags=FINAL)
