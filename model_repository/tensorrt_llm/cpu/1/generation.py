"""In-flight batched autoregressive decoding for a Hugging Face causal LM on CPU.

A `Decoder` holds the running batch: one forward per step over every sequence in it. New prompts are
prefilled on their own (a chunk per step, so a long prompt does not stall the batch), then their KV
rows join the running batch's cache, everything left-padded to one width with the attention mask and
position ids saying where each row really is. Finished sequences leave at once. Greedy decoding
follows transformers' `generate`: same positions, same last-token logits, whatever else is batched.

A sequence with a grammar (guided.py) has its row of logits masked to what the grammar can take next;
one that asks for log probabilities gets each token's, as TensorRT-LLM computes them: the log-softmax
of the logits the token is chosen from (after penalties, bans, the grammar mask and temperature) over
the whole vocabulary, before top_k and top_p cut it (the engine runs with normalize_log_probs false).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import guided
import torch
import torch.nn.functional as F
import xgrammar
from transformers import DynamicCache

# What a token that cannot be chosen reports as its log probability (vLLM's floor): JSON has no -inf.
LOG_PROB_FLOOR = -9999.0


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
        # TensorRT-LLM's rule: top_k 0 and no top_p mean greedy, and so does top_k 1; its backend drops a
        # top_p of 0 or less, so that is no top_p.
        return self.top_k == 1 or (self.top_k == 0 and self.top_p <= 0.0) or self.temperature == 0.0


@dataclass(eq=False)  # identity: two requests may send the same prompt
class Sequence:
    prompt: list[int]
    max_new_tokens: int
    end_id: int
    pad_id: int
    stop_words: list[list[int]] = field(default_factory=list)
    bad_words: list[list[int]] = field(default_factory=list)
    sampling: Sampling = field(default_factory=Sampling)
    grammar: xgrammar.GrammarMatcher | None = None  # the guide its answer follows (guided.matcher)
    return_log_probs: bool = False  # record each answer token's log probability, and their sum
    num_top_log_probs: int = 0  # record this many most likely tokens per step, with their log probabilities
    index: int = 0  # which of its request's num_return_sequences it is (sequence_index)
    generated: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)  # one per generated token
    cum_log_prob: float = 0.0  # their sum, and the end id's when that ended it (as TensorRT-LLM counts)
    top_log_probs: list[list[float]] = field(default_factory=list)  # per generated token, most likely first
    top_log_prob_ids: list[list[int]] = field(default_factory=list)
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


@dataclass(frozen=True)
class Choice:
    token: int
    log_prob: float = 0.0  # set only when the sequence asks for log probabilities
    top: tuple[list[float], list[int]] | None = None  # the most likely tokens' log probabilities and ids


def choose_token(sequence: Sequence, logits: torch.Tensor) -> Choice:
    logits = adjust_logits(sequence, logits.clone())
    token = pick(sequence, logits)
    if not (sequence.return_log_probs or sequence.num_top_log_probs):
        return Choice(token)
    temperature = sequence.sampling.temperature or 1.0  # 0 is greedy: the distribution unscaled
    log_probs = torch.nan_to_num(torch.log_softmax(logits / temperature, dim=-1), nan=LOG_PROB_FLOOR,
                                 neginf=LOG_PROB_FLOOR)
    top = None
    if sequence.num_top_log_probs:
        values, ids = torch.topk(log_probs, min(sequence.num_top_log_probs, log_probs.numel()))
        top = (values.tolist(), ids.tolist())
    return Choice(token, float(log_probs[token]), top)


def pick(sequence: Sequence, logits: torch.Tensor) -> int:
    if not torch.isfinite(logits).any():
        # nothing left to choose: a grammar's only next tokens are banned or held back by min_tokens
        return sequence.end_id
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


def finished_after(sequence: Sequence, choice: Choice) -> bool:
    """Record the chosen token (unless it is the end id) and say whether the sequence is complete."""
    sequence.cum_log_prob += choice.log_prob
    if choice.token == sequence.end_id:
        return True
    sequence.generated.append(choice.token)
    if sequence.return_log_probs:
        sequence.log_probs.append(choice.log_prob)
    if choice.top is not None:
        sequence.top_log_probs.append(choice.top[0])
        sequence.top_log_prob_ids.append(choice.top[1])
    if sequence.grammar is not None:
        sequence.grammar.accept_token(choice.token)
    return len(sequence.generated) >= sequence.max_new_tokens or sequence.hit_stop_word()


@dataclass(frozen=True)
class Emitted:
    """What one forward gave a sequence: a new token (None for the end id, which is not part of the answer),
    and where asked for, its log probability, the most likely tokens, and the sequence's sum so far. One
    decode step can give a sequence two (its prompt's last chunk, then the batch's step), so they are here
    and not read back from the sequence."""

    sequence: Sequence
    token: int | None
    done: bool
    choice: Choice = Choice(-1)
    cum_log_prob: float = 0.0


def last_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                cache: DynamicCache) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                 use_cache=True, logits_to_keep=1).logits[:, -1, :].float()


@dataclass
class Batch:
    """Sequences that decode together. Their KV rows are left-padded to one width: `attention_mask` covers
    the cache (0 over padding), and each row's pending token (chosen, not yet fed) goes at `positions`."""

    sequences: list[Sequence]
    cache: DynamicCache
    attention_mask: torch.Tensor  # [rows, cache width]
    positions: torch.Tensor  # [rows, 1]
    pending: list[int] = field(default_factory=list)

    def settle(self, logits: torch.Tensor) -> list[Emitted]:
        """Choose each row's next token; finished rows leave the batch at once."""
        emitted, keep = [], []
        self.pending = []
        guided.constrain([s.grammar for s in self.sequences], logits)
        for row, sequence in enumerate(self.sequences):
            choice = choose_token(sequence, logits[row])
            done = finished_after(sequence, choice)
            token = choice.token
            emitted.append(Emitted(sequence, None if token == sequence.end_id else token, done, choice,
                                   sequence.cum_log_prob))
            self.pending.append(token)
            if not done:
                keep.append(row)
        self.select(keep)
        return emitted

    def select(self, rows: list[int]) -> None:
        """Keep only `rows`, and cut the left columns that are padding in every row left."""
        if len(rows) == len(self.sequences):
            return
        self.sequences = [self.sequences[row] for row in rows]
        self.pending = [self.pending[row] for row in rows]
        if not rows:
            return
        index = torch.tensor(rows)
        self.cache.batch_select_indices(index)
        self.attention_mask = self.attention_mask[index]
        self.positions = self.positions[index]
        first = int(self.attention_mask.any(dim=0).int().argmax())
        if first:
            self.attention_mask = self.attention_mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def merge(self, other: Batch) -> None:
        """Append `other`'s rows, left-padding whichever cache is narrower."""
        width = max(self.attention_mask.shape[1], other.attention_mask.shape[1])
        for batch in (self, other):
            pad = width - batch.attention_mask.shape[1]
            if pad:
                batch.attention_mask = F.pad(batch.attention_mask, (pad, 0))
                for layer in batch.cache.layers:
                    layer.keys, layer.values = F.pad(layer.keys, (0, 0, pad, 0)), F.pad(layer.values, (0, 0, pad, 0))
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys, mine.values = torch.cat([mine.keys, theirs.keys]), torch.cat([mine.values, theirs.values])
        self.attention_mask = torch.cat([self.attention_mask, other.attention_mask])
        self.positions = torch.cat([self.positions, other.positions])
        self.sequences += other.sequences
        self.pending += other.pending

    def step(self, model) -> list[Emitted]:
        """Feed every row's pending token: one forward for the whole batch."""
        ones = torch.ones(len(self.sequences), 1, dtype=self.attention_mask.dtype)
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=-1)
        logits = last_logits(model, torch.tensor(self.pending).unsqueeze(-1), self.attention_mask, self.positions,
                             self.cache)
        self.positions = self.positions + 1
        return self.settle(logits)


@dataclass
class Prefill:
    """Prompts on their way into a fresh cache, left-padded to one width and fed a chunk of columns at a time."""

    sequences: list[Sequence]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    cache: DynamicCache = field(default_factory=DynamicCache)
    fed: int = 0

    @classmethod
    def of(cls, sequences: list[Sequence]) -> Prefill:
        width = max(len(s.prompt) for s in sequences)
        input_ids = torch.tensor([[s.pad_id] * (width - len(s.prompt)) + s.prompt for s in sequences])
        attention_mask = torch.tensor([[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in sequences])
        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        return cls(sequences, input_ids, attention_mask, position_ids)

    def feed(self, model, tokens: int) -> tuple[Batch, list[Emitted]] | None:
        """Feed about `tokens` more prompt tokens; once the prompts are in, their batch and first tokens."""
        end = min(self.input_ids.shape[1], self.fed + max(1, tokens // len(self.sequences)))
        logits = last_logits(model, self.input_ids[:, self.fed:end], self.attention_mask[:, :end],
                             self.position_ids[:, self.fed:end], self.cache)
        self.fed = end
        if end < self.input_ids.shape[1]:
            return None
        batch = Batch(list(self.sequences), self.cache, self.attention_mask, self.position_ids[:, -1:] + 1)
        return batch, batch.settle(logits)


class Decoder:
    """The running batch of one model, and the prompts on their way into it (one group at a time)."""

    def __init__(self, model, prefill_tokens: int):
        self.model = model
        self.prefill_tokens = prefill_tokens
        self.running: Batch | None = None
        self.joining: Prefill | None = None

    @property
    def sequences(self) -> list[Sequence]:
        return (self.running.sequences if self.running else []) + (self.joining.sequences if self.joining else [])

    def admit(self, sequences: list[Sequence]) -> None:
        """Start prefilling `sequences`; they join the running batch once their prompts are in."""
        if self.joining is not None:
            raise RuntimeError("a prefill is already under way")
        self.joining = Prefill.of(sequences)

    def remove(self, doomed: Collection[Sequence]) -> None:
        """Drop running sequences that need no more tokens (their requests were cancelled)."""
        if self.running:
            self.running.select([row for row, s in enumerate(self.running.sequences) if s not in doomed])
            self.running = self.running if self.running.sequences else None

    def reset(self) -> None:
        self.running = self.joining = None

    @torch.inference_mode()
    def step(self) -> list[Emitted]:
        """One chunk of the joining prompts, then one forward over the running batch (joined rows included)."""
        emitted: list[Emitted] = []
        if self.joining is not None:
            joined = self.joining.feed(self.model, self.prefill_tokens)
            if joined is not None:
                self.joining = None
                batch, first = joined
                emitted += first
                if self.running is None:
                    self.running = batch if batch.sequences else None
                elif batch.sequences:
                    self.running.merge(batch)
        if self.running is not None:
            emitted += self.running.step(self.model)
            self.running = self.running if self.running.sequences else None
        return emitted
