"""OpenAI's response objects: whole answers, stream chunks, usage, as plain dicts."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """The fixed part of every object of one answer."""

    chat: bool
    model: str
    id: str
    created: int

    @classmethod
    def new(cls, chat: bool, model: str) -> Reply:
        prefix = "chatcmpl" if chat else "cmpl"
        return cls(chat, model, f"{prefix}-{secrets.token_hex(12)}", int(time.time()))

    def head(self, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def choice(self, index: int, text: str, finish_reason: str, message: dict | None = None,
               logprobs: dict | None = None) -> dict:
        """One choice of a whole answer; a chat `message` (tool calls) in place of the text where given."""
        if self.chat:
            message = message or {"role": "assistant", "content": text, "refusal": None}
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def whole(self, choices: list[dict], usage: dict) -> dict:
        return {**self.head(chunk=False), "choices": choices, "usage": usage}

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False, index: int = 0) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {**self.head(chunk=True), "choices": [choice]}

    def delta_chunk(self, delta: dict, index: int = 0) -> dict:
        """A chat chunk with a delta of its own (tool calls)."""
        return {**self.head(chunk=True), "choices": [{"index": index, "delta": delta, "logprobs": None,
                                                      "finish_reason": None}]}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self.head(chunk=True), "choices": [], "usage": usage}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def event(body: dict) -> bytes:
    """One server-sent event; the stream ends with `data: [DONE]` (DONE)."""
    return b"data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


DONE = b"data: [DONE]\n\n"
