"""LiteLLM's SDK against an OpenAI-compatible server, called as its docs show for a self-hosted one
(`model="openai/<name>"`, `api_base`, `api_key`). tests/test_clients.py runs it with .venv-clients'
Python: LiteLLM cannot live in .venv (tests/support/clients-requirements.txt says why).

  .venv-clients/bin/python tests/support/litellm_calls.py http://127.0.0.1:9000/v1 SmolLM2-135M-Instruct

Prints one JSON object: for each call, the text, finish reason and usage LiteLLM handed back.
"""

from __future__ import annotations

import json
import os
import sys

# At import LiteLLM fetches its model cost map from GitHub unless told to read the copy it ships
# (litellm/litellm_core_utils/get_model_cost_map.py); this runs where only the server is reachable.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm  # noqa: E402 (after the variable it reads at import)

QUESTION = "What is the capital of France?"


def counts(usage) -> dict | None:
    if not usage:
        return None
    return {key: getattr(usage, key) for key in ("prompt_tokens", "completion_tokens", "total_tokens")}


def answer(response) -> dict:
    choice = response.choices[0]
    text = choice.message.content if hasattr(choice, "message") else choice.text
    return {"text": text, "finish_reason": choice.finish_reason, "usage": counts(response.usage)}


def streamed(chunks) -> dict:
    """A stream as LiteLLM yields it: text from the deltas, the last finish reason, the usage chunk."""
    text, finish, usage = "", None, None
    for chunk in chunks:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = counts(getattr(chunk, "usage", None)) or usage
    return {"text": text, "finish_reason": finish, "usage": usage}


def main(argv: list[str]) -> int:
    api_base, name = argv
    server = {"model": f"openai/{name}", "api_base": api_base, "api_key": "unused"}
    messages = [{"role": "user", "content": QUESTION}]
    results = {
        "completion": answer(litellm.completion(messages=messages, **server)),
        # stream_options as LiteLLM's proxy adds it to every streamed call it forwards
        "completion_stream": streamed(litellm.completion(messages=messages, stream=True,
                                                         stream_options={"include_usage": True}, **server)),
        "text_completion": answer(litellm.text_completion(prompt="The capital of France is", **server)),
    }
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
