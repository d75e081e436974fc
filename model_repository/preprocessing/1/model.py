"""preprocessing: prompt text -> token ids, stop/bad words -> TensorRT-LLM's [2, N] word lists.

Requests are checked here, where the limits and the tokenizer are, and refused with a message that
names the ensemble input at fault (text_input, max_tokens, stop_words, ...).
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils
from end_ids import end_ids
from model_params import load_config, parameter
from transformers import AutoTokenizer
from utf8_text import NotUtf8, decode_text


class RequestError(ValueError):
    """The request cannot be served as sent; the message is shown to the client."""


def word_list(tokenizer, words: list[str], token_words: tuple[int, ...] = ()) -> np.ndarray:
    """TensorRT-LLM's word list: row 0 the concatenated ids, row 1 the end offsets padded with -1.

    `token_words` are single token ids that are words of their own (end-of-sequence ids)."""
    ids: list[int] = []
    offsets: list[int] = []
    for encoded in [tokenizer.encode(word, add_special_tokens=False) for word in words] + [[t] for t in token_words]:
        if not encoded:
            continue
        ids.extend(encoded)
        offsets.append(len(ids))
    if not ids:
        return np.array([[0], [-1]], dtype=np.int32)
    offsets += [-1] * (len(ids) - len(offsets))
    return np.array([ids, offsets], dtype=np.int32)


def pad_word_lists(lists: list[np.ndarray]) -> np.ndarray:
    width = max(item.shape[1] for item in lists)
    padded = np.zeros((len(lists), 2, width), dtype=np.int32)
    padded[:, 1, :] = -1
    for row, item in enumerate(lists):
        padded[row, :, : item.shape[1]] = item
    return padded


class TritonPythonModel:
    def initialize(self, args):
        config, version_dir = load_config(args)
        tokenizer_dir = version_dir / parameter(config, "tokenizer_dir", str)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.add_special_tokens = parameter(config, "add_special_tokens", bool)
        self.apply_chat_template = parameter(config, "apply_chat_template", bool)
        self.max_input_len = parameter(config, "max_input_len", int)
        self.max_output_len = parameter(config, "max_output_len", int)
        if self.apply_chat_template and not self.tokenizer.chat_template:
            raise ValueError(f"apply_chat_template is true but {tokenizer_dir} has no chat template")
        # The backends take one end_id; the other end ids stop the answer as one-token stop words.
        self.end_id, *self.other_end_ids = end_ids(tokenizer_dir, self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.end_id if pad is None else int(pad)

    def encode_prompt(self, text: str) -> list[int]:
        if not text.strip():
            raise RequestError("text_input is empty; send the prompt text")
        if self.apply_chat_template:
            return list(self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True,
                return_dict=True)["input_ids"])
        return self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens)

    def check_output_len(self, value: int) -> None:
        if value < 1:
            raise RequestError(f"max_tokens must be at least 1, got {value}")
        if value > self.max_output_len:
            raise RequestError(f"max_tokens {value} is above this deployment's limit of {self.max_output_len}")

    def words(self, request, name: str, ensemble_name: str, rows: int,
              token_words: tuple[int, ...] = ()) -> list[np.ndarray]:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return [word_list(self.tokenizer, [], token_words) for _ in range(rows)]
        values = tensor.as_numpy().reshape(rows, -1)
        return [word_list(self.tokenizer, [decode_text(w, ensemble_name) for w in row if w], token_words)
                for row in values]

    def process(self, request) -> pb_utils.InferenceResponse:
        queries = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy().reshape(-1)
        rows = len(queries)
        output_len = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy().reshape(rows)
        for value in output_len:
            self.check_output_len(int(value))
        prompts = [self.encode_prompt(decode_text(q, "text_input")) for q in queries]
        for ids in prompts:
            if len(ids) > self.max_input_len:
                raise RequestError(f"text_input is {len(ids)} tokens; this deployment accepts at most "
                                   f"{self.max_input_len} (max_input_len)")
        end_id = self.optional_id(request, "END_ID", self.end_id, rows)
        pad_id = self.optional_id(request, "PAD_ID", self.pad_id, rows)
        width = max(len(ids) for ids in prompts)
        input_ids = np.array([ids + [int(pad_id[i])] * (width - len(ids)) for i, ids in enumerate(prompts)],
                             dtype=np.int32)
        tensors = [
            pb_utils.Tensor("INPUT_ID", input_ids),
            pb_utils.Tensor("REQUEST_INPUT_LEN", np.array([[len(ids)] for ids in prompts], dtype=np.int32)),
            pb_utils.Tensor("BAD_WORDS_IDS", pad_word_lists(self.words(request, "BAD_WORDS_DICT", "bad_words", rows))),
            pb_utils.Tensor("STOP_WORDS_IDS",
                            pad_word_lists(self.words(request, "STOP_WORDS_DICT", "stop_words", rows,
                                                           tuple(self.other_end_ids)))),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", output_len.astype(np.int32).reshape(rows, 1)),
            pb_utils.Tensor("OUT_END_ID", end_id.reshape(rows, 1)),
            pb_utils.Tensor("OUT_PAD_ID", pad_id.reshape(rows, 1)),
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    @staticmethod
    def optional_id(request, name: str, default: int, rows: int) -> np.ndarray:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return np.full(rows, default, dtype=np.int32)
        return tensor.as_numpy().astype(np.int32).reshape(rows)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self.process(request))
            except (RequestError, NotUtf8) as error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))))
        return responses
