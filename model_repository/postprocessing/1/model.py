"""postprocessing: token ids (batch x beam x tokens) -> text, one string per beam."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils
from model_params import load_config, load_tokenizer, parameter


class TritonPythonModel:
    def initialize(self, args):
        config, version_dir = load_config(args)
        self.tokenizer = load_tokenizer(config, version_dir)
        self.skip_special_tokens = parameter(config, "skip_special_tokens", bool)

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        sequences = [beam[:length].tolist() for beam, length in zip(tokens, lengths, strict=True)]
        texts = self.tokenizer.decode_batch(sequences, skip_special_tokens=self.skip_special_tokens)
        return np.array([text.encode("utf-8") for text in texts], dtype=object)

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
            outputs = np.stack([self.decode(t, n) for t, n in zip(tokens, lengths, strict=True)])
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", outputs)]))
        return responses
