"""Per-request sampling parameters, next-token choice for a batch of rows, and log-probabilities.

Greedy rows (``temperature == 0``) take the argmax of the model's logits. Other rows divide the
logits by their temperature, keep the ``top_k`` largest and the smallest set whose probability
reaches ``top_p``, and draw from what is left with the request's own generator (seeded from
``seed`` when one is given, so a seeded request draws the same tokens whatever else is batched
with it). Log-probabilities are those of the model's own distribution (``log_softmax`` of the
raw logits), as vLLM reports them by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: all tokens
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None  # top log-probabilities per token (0: the chosen token's only)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5

    def generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator().manual_seed(int(self.seed))


@dataclass
class TokenChoice:
    """One row's chosen token, with its log-probability and the top alternatives when asked."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


def _filtered(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    scores = logits / params.temperature
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        probs = torch.softmax(ordered, -1)
        before = torch.cumsum(probs, -1) - probs  # probability of the tokens ranked above
        drop = before >= params.top_p
        drop[0] = False
        scores = scores.scatter(0, order, ordered.masked_fill(drop, float("-inf")))
    return scores


def choose(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None], banned: list[list[int]]) -> list[TokenChoice]:
    """The next token of each row of ``logits`` (rows, vocab); ``banned[i]``: token ids row i
    may not take yet (end-of-sequence ids before ``min_tokens``)."""
    logits = logits.float()
    for i, ids in enumerate(banned):
        if ids:
            logits[i, ids] = float("-inf")
    tokens: list[int] = logits.argmax(-1).tolist()
    for i, p in enumerate(params):
        if not p.greedy:
            probs = torch.softmax(_filtered(logits[i], p), -1)
            tokens[i] = int(torch.multinomial(probs, 1, generator=generators[i]).item())
    want = [i for i, p in enumerate(params) if p.logprobs is not None]
    choices = [TokenChoice(int(t)) for t in tokens]
    if want:
        logp = torch.log_softmax(logits[want], -1)
        for j, i in enumerate(want):
            choices[i].logprob = float(logp[j, tokens[i]])
            k = int(params[i].logprobs or 0)
            if k > 0:
                top = torch.topk(logp[j], min(k, logp.shape[-1]))
                choices[i].top = list(zip(top.indices.tolist(), top.values.tolist()))
    return choices
