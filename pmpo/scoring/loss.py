"""The loss matrix: per-example target-token loss of every (prompt, example) pair, batched.

L_CE(P, x, y) = sum_i -log p(y_i | y_<i, x, P): a sum over target tokens only, no length normalisation
(the paper's score). Preference examples use -log sigmoid(beta * (s+ - s-)), s = summed log-prob.
The token ids are those of the whole rendered text (pmpo.text.encoding), so they are what the model really sees.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pmpo.data.examples import Example, MultipleChoice, Preference, Supervised, example_input
from pmpo.errors import ContextLengthError
from pmpo.models.decoding import Decoder, LocalDecoder
from pmpo.models.loading import LoadedModel, TextSide
from pmpo.scoring import prefix_attention
from pmpo.scoring.batching import Batch, plan

# The settings live in pmpo.scoring.settings; their names are re-exported here, where callers look for them.
from pmpo.scoring.settings import Objective, ScorerSettings  # noqa: F401
from pmpo.scoring.temperature import tempered
from pmpo.text.demonstrations import shown
from pmpo.text.encoding import Encoded, common_length, encode_many, encode_text
from pmpo.text.rendering import render
from pmpo.text.template import ExampleInput


@dataclass(frozen=True)
class LossMatrix:
    """Per-example losses of P prompts on N examples."""

    # [P, N] the objective: summed target CE, or preference loss; NaN where the prompt shows the example as a
    # demonstration (pmpo.text.demonstrations), so it was not scored
    loss: np.ndarray
    nll: np.ndarray  # [P, N] summed target NLL (of the chosen output, for preference examples)
    tokens: np.ndarray  # [P, N] target tokens counted in `nll`
    # [P, N] multiple choice: 1.0 where the answer has a lower summed NLL than every distractor (lm-eval's `acc`,
    # read off the same forward passes as the loss), else 0.0; NaN where nothing is ranked (another kind of
    # example, or the `ce` objective, which scores the answer alone). None: not recorded (an older cached result).
    hits: np.ndarray | None = None
    # [P, N] as `hits`, ranking the options per UTF-8 byte (lm-eval's `acc_norm`, the held-out headline for multiple
    # choice): a prompt can keep `acc` and still lose `acc_norm` where the options differ in length.
    hits_norm: np.ndarray | None = None
    # [P, N] `loss` with each prompt's preference pairs at its best softening (pmpo.scoring.temperature), what the
    # selection gate also compares: a gain there is a better ranking of the answers, not a less sure model. Other
    # examples' cells are their loss; NaN as `loss`. None: not recorded (an older cached result).
    tempered: np.ndarray | None = None

    @classmethod
    def stack(cls, parts: Sequence[LossMatrix]) -> LossMatrix:
        """The matrices of several prompt batches on the same examples, one under the other."""
        arrays = {f: [getattr(p, f) for p in parts] for f in ("loss", "nll", "tokens", "hits", "hits_norm", "tempered")}
        return cls(**{f: None if any(a is None for a in v) else np.concatenate(v) for f, v in arrays.items()})

    def row(self, r: int) -> LossMatrix:
        """Prompt `r`'s one-row matrix."""
        return self._map(lambda a: a[r : r + 1], loss_only=False)

    def weighted(self, weights: np.ndarray | None) -> LossMatrix:
        """Each example's losses and hits scaled by its weight (`pmpo.scoring.balance`), so every mean over examples,
        paired difference and accuracy read off the matrix is the weighted one; None: unchanged."""
        return self if weights is None else self._map(lambda a: a * weights, loss_only=True)

    def _map(self, f, *, loss_only: bool) -> LossMatrix:
        """`f` applied to every array (to the losses and hits only, with `loss_only`: nll and tokens stay counts)."""
        keep = (lambda a: a) if loss_only else f
        rest = (None if a is None else f(a) for a in (self.hits, self.hits_norm, self.tempered))
        return LossMatrix(f(self.loss), keep(self.nll), keep(self.tokens), *rest)

    def prompt_accuracy(self, norm: bool = False) -> list[float | None]:
        """[P] the share of multiple-choice examples each prompt ranks right (`norm`: per byte, acc_norm; None: no
        ranked example)."""
        hits = self.hits_norm if norm else self.hits
        if hits is None or np.isnan(hits).all():
            return [None] * len(self.loss)
        return [float(np.nanmean(h)) for h in hits]

    def prompt_loss(self) -> np.ndarray:
        """[P] the batch loss: mean over the examples scored (a prompt's own demonstrations are NaN, left out)."""
        return np.array([row[~np.isnan(row)].mean() if not np.isnan(row).all() else np.nan for row in self.loss])

    def prompt_loss_per_token(self) -> np.ndarray:
        """[P] nats per target token (what people read)."""
        return np.nansum(self.nll, axis=1) / np.maximum(self.tokens.sum(axis=1), 1)

    def n_scored(self) -> np.ndarray:
        """[P] examples each prompt was scored on: all but those it shows as demonstrations."""
        return (~np.isnan(self.loss)).sum(axis=1)


def example_rows(example: Example, mc_objective: Objective = "preference") -> tuple[ExampleInput, list[str], bool]:
    """(input, completions, is_preference): the first completion is the target or the chosen output.

    The input is what rendering takes: the example's text, or its fields when it has several.
    """
    inp = example_input(example)
    if isinstance(example, Supervised):
        return inp, [example.target], False
    if isinstance(example, Preference):
        return inp, [example.chosen, *example.rejected], True
    if isinstance(example, MultipleChoice):
        if mc_objective == "ce":
            return inp, [example.target], False
        # An option that is the answer in other words (an accepted alias) is never a distractor.
        correct = {_folded(a) for a in (example.target, *example.aliases)}
        others = [o for o in example.options if _folded(o) not in correct]
        if not others:  # nothing to prefer the answer over
            return inp, [example.target], False
        return inp, [example.target, *others], True
    raise TypeError(f"not an example: {example!r}")


def _folded(text: str) -> str:
    return text.strip().casefold()


def preference_loss(chosen_nll: float, rejected_nll: Sequence[float], beta: float = 1.0) -> float:
    """Mean over rejected outputs of -log sigmoid(beta * (s+ - s-)), with s = -nll (summed log-prob)."""
    margins = beta * (np.asarray(rejected_nll, dtype=np.float64) - chosen_nll)  # s+ - s- = nll- - nll+
    return float(np.mean(np.logaddexp(0.0, -margins)))  # softplus(-m) = -log sigmoid(m), stable


class BaseScorer:
    """What every scorer does: per-example losses from summed completion NLLs, never scoring a pair twice.

    Subclasses say only how new (input, completion) pairs are scored under a prompt: `Scorer` in this process,
    `pmpo.remote.scorer.RemoteScorer` by a server.
    """

    def __init__(self, lm: LoadedModel | TextSide, settings: ScorerSettings = ScorerSettings()):
        self.lm = lm  # the model, or only its text side (tokenizer, placement, context) for a remote scorer
        self.settings = settings
        self._memo: dict[tuple[str, str, str], tuple[float, int]] = {}
        self.tokens_computed = 0  # tokens run through the model (prefix + padded suffix), for throughput

    def decoder(self) -> Decoder | None:
        """Greedy decoding by the scored model itself; None without weights or a server to decode with."""
        return None

    def loss_matrix(self, prompts: Sequence[str], examples: Sequence[Example]) -> LossMatrix:
        """Score every prompt on every example."""
        rows = [example_rows(e, self.settings.mc_objective) for e in examples]
        shape = (len(prompts), len(examples))
        loss, nll, tokens = np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=np.int64)
        hits, hits_norm = np.full(shape, np.nan), np.full(shape, np.nan)
        softened = np.full(shape, np.nan)
        ranked = [isinstance(e, MultipleChoice) and is_pref for e, (_, _, is_pref) in zip(examples, rows)]
        for p, prompt in enumerate(prompts):
            # An example the prompt shows as a demonstration is never scored with itself in it: its cells stay NaN
            # (no tokens), and every mean and paired difference leaves it out.
            excluded = set(shown(prompt, examples))
            loss[p, sorted(excluded)], nll[p, sorted(excluded)] = np.nan, np.nan
            scored = [(i, row) for i, row in enumerate(rows) if i not in excluded]
            pairs = [(inp, c) for _, (inp, comps, _) in scored for c in comps]
            owner = [i for i, (_, comps, _) in scored for _ in comps]
            pair_nll, pair_tokens = self.completions(prompt, pairs, owner) if pairs else ([], [])
            at, margins = 0, {}
            for i, (_, comps, is_pref) in scored:
                nll[p, i], tokens[p, i] = pair_nll[at], pair_tokens[at]
                if is_pref:
                    others = pair_nll[at + 1 : at + len(comps)]
                    loss[p, i] = preference_loss(pair_nll[at], others, self.settings.beta)
                    margins[i] = self.settings.beta * (others - pair_nll[at])
                    if ranked[i]:  # a tie is a miss: the answer must be the model's one pick
                        hits[p, i] = float(pair_nll[at] < others.min())
                        per_byte = pair_nll[at : at + len(comps)] / [max(len(c.encode()), 1) for c in comps]
                        hits_norm[p, i] = float(per_byte[0] < per_byte[1:].min())
                else:
                    loss[p, i] = pair_nll[at]
                at += len(comps)
            softened[p] = loss[p]
            softened[p, list(margins)] = tempered(list(margins.values()))
        return LossMatrix(loss=loss, nll=nll, tokens=tokens, hits=hits, hits_norm=hits_norm, tempered=softened)

    def completions(
        self, prompt: str, pairs: Sequence[tuple[str, str]], owner: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed NLL and token count of each (input, completion) under `prompt`."""
        todo = sorted({(inp, c) for inp, c in pairs if (prompt, inp, c) not in self._memo})
        if todo:
            owner_of = {pair: owner[k] for k, pair in enumerate(pairs)} if owner else {}
            for pair, scored in zip(todo, self._score_new(prompt, todo, owner_of)):
                self._memo[(prompt, *pair)] = scored
        out = [self._memo[(prompt, inp, c)] for inp, c in pairs]
        return np.array([o[0] for o in out]), np.array([o[1] for o in out], dtype=np.int64)

    def _score_new(self, prompt: str, pairs: list[tuple[str, str]], owner_of: dict) -> list[tuple[float, int]]:
        """(summed NLL, target tokens) of each pair, none scored before; `owner_of` names examples in errors."""
        raise NotImplementedError


class Scorer(BaseScorer):
    """Scores completions under prompts with one model in this process."""

    def __init__(self, lm: LoadedModel, settings: ScorerSettings = ScorerSettings()):
        super().__init__(lm, settings)
        self._prefixes: dict[str, list[int]] = {}
        self._shared: bool | None = None  # whether the shared-prefix attention is installed (decided lazily)
        # Sequences (prompt, input, completion) that do not begin with the prompt's shared tokens (a merge
        # across the boundary), so the prompt was run again inside them instead of reusing its KV cache.
        self.prefix_fallbacks = 0

    def decoder(self) -> Decoder | None:
        """Greedy decoding by the scored model itself: in-process here; None without weights to decode with."""
        return LocalDecoder(self.lm) if isinstance(self.lm, LoadedModel) else None

    def _score_new(self, prompt: str, pairs: list[tuple[str, str]], owner_of: dict) -> list[tuple[float, int]]:
        tok, lm = self.lm.tokenizer, self.lm
        encoded = encode_many(tok, lm.placement, prompt, pairs)
        prompt_ids = self._prefix_ids(prompt) if self.settings.reuse_prefix else []
        for pair, enc in zip(pairs, encoded):
            check_encoded(enc, len(prompt_ids), owner_of.get(pair), lm.context_length)
        prefix, shares = shared_prefix(prompt_ids, encoded)
        if prompt_ids:  # reuse was tried: count the sequences that could not have it
            self.prefix_fallbacks += shares.count(False)
        values = [0.0] * len(pairs)
        for reuse in (True, False):
            group = [i for i, ok in enumerate(shares) if ok == reuse]
            if group:
                cut = len(prefix) if reuse else 0
                seqs = [list(encoded[i].ids[cut:]) for i in group]
                results = self._run(prefix if reuse else [], seqs, [encoded[i].target_start - cut for i in group])
                for i, value in zip(group, results):
                    values[i] = value
        return [(value, len(enc.target)) for enc, value in zip(encoded, values)]

    def _prefix_ids(self, prompt: str) -> list[int]:
        """Ids of the prompt's part of the context, shared by every example (memoised per prompt)."""
        if prompt not in self._prefixes:
            tok = self.lm.tokenizer
            self._prefixes[prompt] = encode_text(tok, render(tok, self.lm.placement, prompt, "").prefix)
        return self._prefixes[prompt]

    @torch.inference_mode()
    def _run(self, prefix: list[int], seqs: list[list[int]], starts: list[int]) -> list[float]:
        """Summed target NLL of each sequence (target from `starts[i]`) after `prefix` (empty: no reuse)."""
        reuse = len(prefix) > 0
        shared = reuse and self._uses_shared_prefix()
        prefix_kv = self._prefix_kv(prefix) if reuse else None
        pad = self.lm.tokenizer.pad_token_id
        out = [0.0] * len(seqs)
        layout = {"pack": shared, "offset": len(prefix), "pad_id": pad, "share": self.settings.share_inputs}
        for batch in plan(seqs, starts, self._token_budget(), **layout):
            for i, value in zip(batch.seqs, self._forward(batch, prefix_kv, shared)):
                out[i] = value
        return out

    def _prefix_kv(self, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ids = torch.tensor([prefix], device=self.lm.device)
        out = self.lm.model.base_model(input_ids=ids, use_cache=True)
        self.tokens_computed += len(prefix)
        self.lm.usage.scored(len(prefix))
        return _cache_tensors(out.cache if _takes_cache_kwarg() else out.past_key_values)

    def _uses_shared_prefix(self) -> bool:
        if self._shared is None:
            mode = self.settings.prefix_attention
            if mode == "auto":
                mode = "expand" if self.lm.device.type == "cuda" else "shared"
            self._shared = mode == "shared" and prefix_attention.install(self.lm.model)
        return self._shared

    def _token_budget(self) -> int:
        if self.settings.token_budget is not None:
            return self.settings.token_budget
        return 8192 if self.lm.device.type == "cuda" else 2048

    def _forward(self, batch: Batch, prefix_kv, shared: bool) -> list[float]:
        """Summed target NLL of each sequence in `batch`, in the order of `batch.seqs`."""
        model, device = self.lm.model, self.lm.device
        ids = batch.ids.to(device)
        extra: dict = {"use_cache": False, "position_ids": batch.positions.to(device)}
        if shared:
            blocked = batch.blocked.to(device) if batch.blocked is not None else None
            extra[prefix_attention.KWARG] = prefix_attention.SharedPrefix(prefix_kv, blocked)
        elif prefix_kv is not None:
            extra |= _cache_kwargs(_expanded_cache(prefix_kv, len(ids), model.config))
        hidden = model.base_model(input_ids=ids, **extra).last_hidden_state  # [R, W, H]
        self.tokens_computed += ids.numel()  # the prefix KV is reused, not recomputed
        self.lm.usage.scored(ids.numel())
        # Logits only where a target token is predicted (the LM head is a large share of a small model's FLOPs).
        logits = model.get_output_embeddings()(hidden[batch.rows.to(device), batch.cols.to(device)]).float()  # [T, V]
        nll = F.cross_entropy(logits, batch.targets.to(device), reduction="none")  # [T]
        per_seq = torch.zeros(len(batch.seqs), dtype=torch.float64, device=device)
        return per_seq.index_add_(0, batch.owner.to(device), nll.double()).tolist()


def check_encoded(enc: Encoded, prefix_len: int, owner: int | None, context_length: int) -> None:
    """A one-line error naming the example when its text runs past the context, or has nothing to score."""
    where = f"example {owner}" if owner is not None else "an example"
    total, target = len(enc.ids), len(enc.target)
    if total > context_length:
        raise ContextLengthError(
            f"{where} is {total} tokens with the prompt (prompt {prefix_len}, input {total - target - prefix_len}, "
            f"reference {target}), over the model's context of {context_length}: "
            "shorten it or drop it from the dataset"
        )
    if not target:
        raise ContextLengthError(f"{where} has an empty reference output")
    if enc.target_start == 0:
        raise ContextLengthError(f"{where}: nothing precedes its reference output to predict it from")


def shared_prefix(prefix: Sequence[int], encoded: Sequence[Encoded]) -> tuple[list[int], list[bool]]:
    """The leading prompt tokens whose KV cache every sharing sequence reuses, and which sequences share it.

    The prompt tokenised alone is a token prefix of the whole text only where nothing merges across its end
    (a byte-level BPE splits "\n\n" from a following word; SentencePiece merges a piece into the input). The
    first tokens still agree, so the shared prefix is cut to the length that saves the most recomputed tokens:
    sequences that begin with it reuse it; the others (the fallbacks) run their whole text.
    """
    # A sequence can share at most up to its first target token, which must be predicted inside the batch.
    agree = [min(common_length(prefix, e.ids), e.target_start - 1) for e in encoded]
    best = max(set(agree) | {0}, key=lambda n: (n * sum(a >= n for a in agree), n))
    return list(prefix[:best]), [best > 0 and a >= best for a in agree]


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
