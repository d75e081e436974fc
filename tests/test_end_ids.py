"""Every end-of-sequence id in generation_config.json ends the answer (Llama-3.1-Instruct lists three).

SmolLM2 lists one, so the test gives a copy of the repository a second end id: a token the model is
known to produce early in its greedy answer. The answer must stop there, as transformers' generate
with that eos_token_id list does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import triton_server
from harness.llm_client import GrpcLlmClient
from test_serving import direct_ids
from transformers import AutoTokenizer

pytestmark = pytest.mark.triton

PROMPT = "What is the capital of France?"


def test_a_second_end_id_ends_the_answer(triton, tmp_path: Path):
    tokenizer = AutoTokenizer.from_pretrained(triton.repository / "preprocessing" / "1" / "tokenizer")
    ids = direct_ids(triton, tokenizer, PROMPT, 16)
    assert len(ids) > 4, ids
    stop_at = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])

    repository = tmp_path / "repo"
    shutil.copytree(triton.repository, repository, copy_function=shutil.copy)
    config_path = repository / "preprocessing" / "1" / "tokenizer" / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = [config["eos_token_id"], ids[stop_at]]
    config_path.write_text(json.dumps(config))

    with triton_server(repository, tmp_path) as server:
        client = GrpcLlmClient(server.grpc)
        answer = client.send({"text_input": PROMPT, "max_tokens": 16})
        streamed = client.send({"text_input": PROMPT, "max_tokens": 16, "stream": True})
        client.close()
    # An end id that is an ordinary token (here) stays in the text, as a stop word does; real end ids
    # are special tokens, which the detokenizer leaves out.
    assert answer.error is None and answer.text == tokenizer.decode(ids[:stop_at + 1])
    assert streamed.text == answer.text
