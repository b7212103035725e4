"""The loss matrix: per-example target-token loss of every (prompt, example) pair, batched.

L_CE(P, x, y) = sum_i -log p(y_i | y_<i, x, P): a sum over target tokens only, no length normalisation
(the paper's score). Preference examples use -log sigmoid(beta * (s+ - s-)), s = summed log-prob.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pmpo.data.examples import Example, MultipleChoice, Preference, Supervised
from pmpo.errors import ContextLengthError
from pmpo.models import LoadedModel
from pmpo.prompting import render

Objective = Literal["ce", "preference"]


@dataclass(frozen=True)
class ScorerSettings:
    """How the scorer batches its forward passes."""

    # Suffix tokens (padded) per forward pass. 4096 keeps SmolLM2's activations near 100 MB and the
    # batches large enough for the matmuls to run near peak on 2 cores.
    token_budget: int = 4096
    # Every example of one candidate shares the prompt: compute its KV cache once and reuse it.
    reuse_prefix: bool = True
    # How multiple-choice examples are scored: CE on the correct option, or preference against distractors.
    mc_objective: Objective = "ce"
    beta: float = 1.0  # the paper's beta for the preference loss


@dataclass(frozen=True)
class LossMatrix:
    """Per-example losses of P prompts on N examples."""

    loss: np.ndarray  # [P, N] the objective: summed target CE, or preference loss
    nll: np.ndarray  # [P, N] summed target NLL (of the chosen output, for preference examples)
    tokens: np.ndarray  # [P, N] target tokens counted in `nll`

    def prompt_loss(self) -> np.ndarray:
        """[P] the batch loss: mean over examples."""
        return self.loss.mean(axis=1)

    def prompt_loss_per_token(self) -> np.ndarray:
        """[P] nats per target token (what people read)."""
        return self.nll.sum(axis=1) / np.maximum(self.tokens.sum(axis=1), 1)


def example_rows(example: Example, mc_objective: Objective = "ce") -> tuple[str, list[str], bool]:
    """(input, completions, is_preference): the first completion is the target or the chosen output."""
    if isinstance(example, Supervised):
        return example.input, [example.target], False
    if isinstance(example, Preference):
        return example.input, [example.chosen, *example.rejected], True
    if isinstance(example, MultipleChoice):
        if mc_objective == "ce":
            return example.input, [example.target], False
        others = [o for o in example.options if o != example.target]
        return example.input, [example.target, *others], True
    raise TypeError(f"not an example: {example!r}")


def preference_loss(chosen_nll: float, rejected_nll: Sequence[float], beta: float = 1.0) -> float:
    """Mean over rejected outputs of -log sigmoid(beta * (s+ - s-)), with s = -nll (summed log-prob)."""
    margins = beta * (np.asarray(rejected_nll, dtype=np.float64) - chosen_nll)  # s+ - s- = nll- - nll+
    return float(np.mean(np.logaddexp(0.0, -margins)))  # softplus(-m) = -log sigmoid(m), stable


class Scorer:
    """Scores completions under prompts with one model; never scores the same pair twice."""

    def __init__(self, lm: LoadedModel, settings: ScorerSettings = ScorerSettings()):
        self.lm = lm
        self.settings = settings
        self._memo: dict[tuple[str, str, str], tuple[float, int]] = {}
        self.tokens_computed = 0  # tokens run through the model (prefix + padded suffix), for throughput

    def loss_matrix(self, prompts: Sequence[str], examples: Sequence[Example]) -> LossMatrix:
        """Score every prompt on every example."""
        rows = [example_rows(e, self.settings.mc_objective) for e in examples]
        shape = (len(prompts), len(examples))
        loss, nll, tokens = np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=np.int64)
        for p, prompt in enumerate(prompts):
            pairs = [(inp, c) for inp, comps, _ in rows for c in comps]
            owner = [i for i, (_, comps, _) in enumerate(rows) for _ in comps]
            pair_nll, pair_tokens = self.completions(prompt, pairs, owner)
            at = 0
            for i, (_, comps, is_pref) in enumerate(rows):
                nll[p, i], tokens[p, i] = pair_nll[at], pair_tokens[at]
                if is_pref:
                    loss[p, i] = preference_loss(pair_nll[at], pair_nll[at + 1 : at + len(comps)], self.settings.beta)
                else:
                    loss[p, i] = pair_nll[at]
                at += len(comps)
        return LossMatrix(loss=loss, nll=nll, tokens=tokens)

    def completions(
        self, prompt: str, pairs: Sequence[tuple[str, str]], owner: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL and token count of each (input, completion) under `prompt`."""
        todo = sorted({(inp, c) for inp, c in pairs if (prompt, inp, c) not in self._memo})
        if todo:
            self._score_new(prompt, todo, owner_of={pair: owner[k] for k, pair in enumerate(pairs)} if owner else {})
        out = [self._memo[(prompt, inp, c)] for inp, c in pairs]
        return np.array([o[0] for o in out]), np.array([o[1] for o in out], dtype=np.int64)

    def _score_new(self, prompt: str, pairs: list[tuple[str, str]], owner_of: dict) -> None:
        tok, lm = self.lm.tokenizer, self.lm
        prefix_text = render(tok, lm.placement, prompt, "").prefix
        prefix = _encode(tok, prefix_text, leading=True)
        seqs, starts = [], []
        for inp, completion in pairs:
            middle = _encode(tok, render(tok, lm.placement, prompt, inp).middle)
            target = _encode(tok, completion)
            total = len(prefix) + len(middle) + len(target)
            if total > lm.context_length:
                where = f"example {owner_of[(inp, completion)]}" if (inp, completion) in owner_of else "an example"
                raise ContextLengthError(
                    f"{where} is {total} tokens with the prompt (prompt {len(prefix)}, input {len(middle)}, "
                    f"reference {len(target)}), over the model's context of {lm.context_length}: "
                    "shorten it or drop it from the dataset"
                )
            if not target:
                raise ContextLengthError(f"{where if owner_of else 'an example'} has an empty reference output")
            seqs.append(middle + target)
            starts.append(len(middle))
        results = self._run(prefix, seqs, starts)
        for pair, (seq, start), value in zip(pairs, zip(seqs, starts), results):
            self._memo[(prompt, *pair)] = (value, len(seq) - start)

    @torch.inference_mode()
    def _run(self, prefix: list[int], seqs: list[list[int]], starts: list[int]) -> list[float]:
        """Run the suffixes in length-sorted, token-budgeted batches; return summed target NLL per seq."""
        reuse = self.settings.reuse_prefix and len(prefix) > 0
        if not reuse:  # fold the prefix into every sequence
            seqs = [prefix + s for s in seqs]
            starts = [len(prefix) + s for s in starts]
        prefix_kv = self._prefix_kv(prefix) if reuse else None
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out = [0.0] * len(seqs)
        for batch in _batches(order, [len(s) for s in seqs], self.settings.token_budget):
            nll = self._forward(prefix_kv, len(prefix) if reuse else 0, [seqs[i] for i in batch], [starts[i] for i in batch])
            for i, value in zip(batch, nll):
                out[i] = value
        return out

    def _prefix_kv(self, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ids = torch.tensor([prefix], device=self.lm.device)
        out = self.lm.model.base_model(input_ids=ids, use_cache=True)
        self.tokens_computed += len(prefix)
        return _cache_tensors(out.cache if _takes_cache_kwarg() else out.past_key_values)

    def _forward(self, prefix_kv, prefix_len: int, seqs: list[list[int]], starts: list[int]) -> list[float]:
        model, device = self.lm.model, self.lm.device
        width = max(len(s) for s in seqs)
        # Right padding needs no attention mask: causal attention never lets a real token see a later pad.
        ids = torch.full((len(seqs), width), self.lm.tokenizer.pad_token_id, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
        ids = ids.to(device)
        cache = _expanded_cache(prefix_kv, len(seqs), model.config) if prefix_kv else None
        hidden = model.base_model(input_ids=ids, **_cache_kwargs(cache)).last_hidden_state  # [B, L, H]
        self.tokens_computed += ids.numel()  # the prefix KV is reused, not recomputed
        # Logits only where a target token is predicted: position t predicts token t+1.
        rows = torch.cat([torch.full((len(s) - st,), r) for r, (s, st) in enumerate(zip(seqs, starts))]).to(device)
        pos = torch.cat([torch.arange(st - 1, len(s) - 1) for s, st in zip(seqs, starts)]).to(device)
        targets = ids[rows, pos + 1]
        logits = model.get_output_embeddings()(hidden[rows, pos]).float()  # [T, V]
        nll = F.cross_entropy(logits, targets, reduction="none")  # [T]
        per_row = torch.zeros(len(seqs), dtype=torch.float64, device=device).index_add_(0, rows, nll.double())
        return per_row.tolist()


def _batches(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Group indices (sorted longest first) so that rows x longest row stays within `budget` tokens."""
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _encode(tokenizer, text: str, leading: bool = False) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    bos = tokenizer.bos_token_id
    # Tokenizers that add BOS on their own expect it at the start of the sequence.
    if leading and bos is not None and tokenizer("x")["input_ids"][:1] == [bos]:
        ids = [bos, *ids]
    return ids


def _cache_kwargs(cache) -> dict:
    """transformers renamed `past_key_values` to `cache` (5.2x); pass it under the name this version takes."""
    if cache is None:
        return {"use_cache": False}
    name = "cache" if _takes_cache_kwarg() else "past_key_values"
    return {name: cache, "use_cache": True}


@functools.lru_cache(maxsize=1)
def _takes_cache_kwarg() -> bool:
    from transformers import LlamaModel

    return "cache" in inspect.signature(LlamaModel.forward).parameters


def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _expanded_cache(prefix_kv, batch: int, config):
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for layer, (k, v) in enumerate(prefix_kv):
        cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), layer)
    return cache
