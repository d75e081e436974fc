"""Log probabilities: what tensorrt_llm returns per token (`output_log_probs`, and on the CPU runtime the
top-N alternatives `top_log_probs`/`top_log_prob_ids`) -> OpenAI's `logprobs` objects.

Chat answers carry `{"content": [{token, logprob, bytes, top_logprobs}], "refusal": null}`; legacy
completions `{tokens, token_logprobs, top_logprobs, text_offset}`. A token's text is its id decoded
alone and `bytes` that text's UTF-8, as vLLM writes them (a byte-level token that is part of a
character decodes to "\ufffd").
"""

from __future__ import annotations

from dataclasses import dataclass, field

# model_repository/common, on the path from gateway/__init__.py
from loopback import values
from tokenizers import Tokenizer


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # the most likely tokens at that step, most likely first


def of_event(event: dict, ids: list[int], top: int) -> list[TokenLogprob]:
    """The log probabilities one tensorrt_llm response carries for its new `ids`: the last ones of
    `output_log_probs`, since the C++ backend repeats the earlier tokens' in every streamed response
    (the CPU runtime sends only the new ones). A response with no ids (the end id's) carries none."""
    if not ids:
        return []
    chosen = values(event, "output_log_probs")[-len(ids):]
    if len(chosen) < len(ids):
        raise ValueError(f"tensorrt_llm returned {len(chosen)} log probabilities for {len(ids)} tokens")
    alternatives = [()] * len(ids)
    if top:
        probs, top_ids = values(event, "top_log_probs"), values(event, "top_log_prob_ids")
        width = top
        probs, top_ids = probs[-len(ids) * width:], top_ids[-len(ids) * width:]
        alternatives = [tuple(zip(top_ids[i * width:i * width + top], probs[i * width:i * width + top], strict=True))
                        for i in range(len(ids))]
    return [TokenLogprob(token, float(logprob), top_of) for token, logprob, top_of in zip(ids, chosen, alternatives,
                                                                                           strict=True)]


@dataclass
class Logprobs:
    """One answer's log probabilities as they arrive; `take()` hands out those not sent yet."""

    fast: Tokenizer
    chat: bool
    entries: list[TokenLogprob] = field(default_factory=list)
    sent: int = 0

    def add(self, entries: list[TokenLogprob]) -> None:
        self.entries += entries

    def pending(self) -> bool:
        return len(self.entries) > self.sent

    def text(self, token: int) -> str:
        return self.fast.decode([token], skip_special_tokens=False)

    def take(self, offset: int = 0) -> dict:
        """OpenAI's logprobs object for the tokens not sent yet; `offset`: where their text begins in the
        answer (completions' text_offset)."""
        entries, self.sent = self.entries[self.sent:], len(self.entries)
        if self.chat:
            return {"content": [self.chat_entry(e.token, e.logprob) | {
                "top_logprobs": [self.chat_entry(t, lp) for t, lp in e.top]} for e in entries], "refusal": None}
        tokens = [self.text(e.token) for e in entries]
        offsets, at = [], offset
        for token in tokens:
            offsets.append(at)
            at += len(token)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self.text(t): lp for t, lp in e.top} for e in entries] if any(e.top for e in entries)
                else None, "text_offset": offsets}

    def chat_entry(self, token: int, logprob: float) -> dict:
        text = self.text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
