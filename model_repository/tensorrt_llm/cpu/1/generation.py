"""Batched autoregressive decoding for a Hugging Face causal LM on CPU.

One prefill over the left-padded batch, then one forward per step over the sequences still running.
Finished sequences leave the batch (their KV rows are dropped), so a short answer does not wait
for a long one. Greedy decoding follows transformers' `generate` exactly: same positions, same
last-token logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache


@dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        # TensorRT-LLM's rule: top_k 0 and top_p 0 mean greedy, and so does top_k 1.
        return self.top_k == 1 or (self.top_k == 0 and self.top_p == 0.0) or self.temperature == 0.0


@dataclass
class Sequence:
    prompt: list[int]
    max_new_tokens: int
    end_id: int
    pad_id: int
    stop_words: list[list[int]] = field(default_factory=list)
    bad_words: list[list[int]] = field(default_factory=list)
    sampling: Sampling = field(default_factory=Sampling)
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not self.sampling.greedy:
            self.generator = torch.Generator()
            if self.sampling.seed is not None:
                self.generator.manual_seed(self.sampling.seed)
            else:
                self.generator.seed()

    def hit_stop_word(self) -> bool:
        return any(len(word) <= len(self.generated) and self.generated[-len(word):] == word
                   for word in self.stop_words)


def adjust_logits(sequence: Sequence, logits: torch.Tensor) -> torch.Tensor:
    sampling = sequence.sampling
    context = sequence.prompt + sequence.generated
    if sampling.repetition_penalty != 1.0 and context:
        seen = torch.tensor(sorted(set(context)))
        scores = logits[seen]
        logits[seen] = torch.where(scores > 0, scores / sampling.repetition_penalty,
                                   scores * sampling.repetition_penalty)
    if (sampling.presence_penalty or sampling.frequency_penalty) and sequence.generated:
        tokens, counts = torch.tensor(sequence.generated).unique(return_counts=True)
        logits[tokens] -= sampling.presence_penalty + sampling.frequency_penalty * counts.to(logits.dtype)
    for word in sequence.bad_words:
        prefix = word[:-1]
        if not prefix or context[len(context) - len(prefix):] == prefix:
            logits[word[-1]] = float("-inf")
    if len(sequence.generated) < sampling.min_tokens:
        logits[sequence.end_id] = float("-inf")
    return logits


def choose_token(sequence: Sequence, logits: torch.Tensor) -> int:
    logits = adjust_logits(sequence, logits.clone())
    sampling = sequence.sampling
    if sampling.greedy:
        return int(torch.argmax(logits))
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits[logits < kth] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    if 0.0 < sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > sampling.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=sequence.generator))


def finished_after(sequence: Sequence, token: int) -> bool:
    """Record `token` (unless it is the end id) and say whether the sequence is complete."""
    if token == sequence.end_id:
        return True
    sequence.generated.append(token)
    return len(sequence.generated) >= sequence.max_new_tokens or sequence.hit_stop_word()


@torch.inference_mode()
def generate(
    model,
    sequences: list[Sequence],
    on_token: Callable[[int, int], None],
    on_finish: Callable[[int], None],
    is_cancelled: Callable[[int], bool] = lambda index: False,
) -> None:
    """Decode every sequence to completion, calling back with (index, token) and (index) when done."""
    width = max(len(s.prompt) for s in sequences)
    input_ids = torch.tensor([[s.pad_id] * (width - len(s.prompt)) + s.prompt for s in sequences])
    attention_mask = torch.tensor([[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in sequences])
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    cache = DynamicCache()
    active = list(range(len(sequences)))
    while active:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
        keep: list[int] = []
        next_tokens: list[int] = []
        for row, index in enumerate(active):
            sequence = sequences[index]
            token = choose_token(sequence, logits[row])
            done = finished_after(sequence, token)
            if token != sequence.end_id:
                on_token(index, token)
            if done or is_cancelled(index):
                on_finish(index)
            else:
                keep.append(row)
                next_tokens.append(token)
        if not keep:
            return
        if len(keep) < len(active):
            rows = torch.tensor(keep)
            cache.batch_select_indices(rows)
            attention_mask = attention_mask[rows]
            position_ids = position_ids[rows]
            active = [active[row] for row in keep]
        input_ids = torch.tensor(next_tokens).unsqueeze(-1)
        attention_mask = torch.cat([attention_mask, torch.ones(len(keep), 1, dtype=attention_mask.dtype)], dim=-1)
        position_ids = position_ids[:, -1:] + 1
