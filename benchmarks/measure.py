"""Measuring tools of the loss benchmark: timers, matmul peaks, FLOP counts of a scoring workload."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch

from pmpo.models.loading import LoadedModel
from pmpo.scoring.loss import example_rows
from pmpo.text.rendering import render


@dataclass
class Timer:
    """Wall-clock and CPU seconds of a `with` block (CPU time shows how contended the machine was)."""

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> "Timer":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


@dataclass(frozen=True)
class Peak:
    """Best matmul rate in one dtype: per wall second, and per CPU second (blind to time-sharing)."""

    wall: float  # GFLOP/s
    cpu: float  # GFLOP per CPU-second


def matmul_peak(dtype: torch.dtype, seconds: float = 1.5, repeats: int = 2) -> Peak:
    """Best rate of SmolLM2-shaped matmuls ([rows, 576] x [576, 1536]) at torch's current thread count."""
    wall = cpu = 0.0
    with torch.inference_mode():
        for _ in range(repeats):  # best of a few: other processes may hold the cores for a while
            for rows in (256, 1024, 2048):
                a, b = torch.randn(rows, 576).to(dtype), torch.randn(576, 1536).to(dtype)
                with Timer() as warm:
                    a @ b  # warm-up: thread pool, kernel selection
                if warm.wall > seconds / 3 / repeats and rows > 256:
                    break  # an emulated dtype: larger shapes would only take longer
                with Timer() as t:
                    runs = 0
                    while runs == 0 or time.perf_counter() - t._wall < seconds / 3 / repeats:
                        a @ b
                        runs += 1
                flops = 2 * rows * 576 * 1536 * runs / 1e9
                wall, cpu = max(wall, flops / t.wall), max(cpu, flops / max(t.cpu, 1e-9))
    return Peak(wall, cpu)


def peak_rss_gib() -> float:
    """High-water resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@dataclass(frozen=True)
class ModelShape:
    """What FLOP counts need to know about a decoder."""

    linear_params: int  # weights of the matmuls in the decoder layers (each costs 2 FLOPs per token)
    layers: int
    attention_width: int  # query heads x head size
    hidden: int
    vocab: int

    @classmethod
    def of(cls, lm: LoadedModel) -> "ModelShape":
        """Read the shape off a loaded model."""
        config = lm.model.config
        linear = sum(m.weight.numel() for m in lm.model.base_model.layers.modules() if isinstance(m, torch.nn.Linear))
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        width = config.num_attention_heads * head_dim
        return cls(linear, config.num_hidden_layers, width, config.hidden_size, config.vocab_size)

    def forward(self, tokens: int, attended: int, logits: int) -> float:
        """FLOPs of a pass over `tokens` attending to `attended` key positions in all, with `logits` head rows."""
        return (
            2.0 * self.linear_params * tokens
            + 4.0 * self.layers * self.attention_width * attended
            + (2.0 * self.hidden * self.vocab * logits)
        )


@dataclass(frozen=True)
class Pairs:
    """Token lengths of every (prompt, example completion) of a workload."""

    prefix: list[int]  # per prompt
    seqs: list[list[tuple[int, int]]]  # per prompt: (input tokens incl. template, target tokens) per completion

    def workload_tokens(self, which: list[tuple[int, int]] | None = None) -> int:
        """Tokens a plain per-example loop feeds: prefix + input + target for every pair."""
        return sum(self.prefix[p] + m + t for p, k in self._pick(which) for m, t in [self.seqs[p][k]])

    def naive_flops(self, shape: ModelShape, which: list[tuple[int, int]] | None = None) -> float:
        """FLOPs of the naive loop: every pair in full, causal attention, logits at every position."""
        total = 0.0
        for p, k in self._pick(which):
            m, t = self.seqs[p][k]
            n = self.prefix[p] + m + t
            total += shape.forward(n, n * (n + 1) // 2, n)
        return total

    def scorer_flops(self, shape: ModelShape) -> float:
        """Useful FLOPs of the scorer: each prefix once, inputs and targets after it, logits at targets only."""
        total = 0.0
        for prefix, seqs in zip(self.prefix, self.seqs):
            total += shape.forward(prefix, prefix * (prefix + 1) // 2, 0)
            for m, t in seqs:
                n = m + t - 1  # the last target token is never fed
                total += shape.forward(n, n * prefix + n * (n + 1) // 2, t)
        return total

    def _pick(self, which):
        return which if which is not None else [(p, k) for p in range(len(self.seqs)) for k in range(len(self.seqs[p]))]


def pair_lengths(lm: LoadedModel, prompts, examples) -> Pairs:
    """Token lengths as the scorer and the naive loop see them (pieces tokenised separately)."""
    tok = lm.tokenizer

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0

    bos = 1 if tok.bos_token_id is not None and tok("x")["input_ids"][:1] == [tok.bos_token_id] else 0
    prefix, seqs = [], []
    for prompt in prompts:
        prefix.append(bos + count(render(tok, lm.placement, prompt, "").prefix))
        rows = [example_rows(e) for e in examples]
        seqs.append(
            [(count(render(tok, lm.placement, prompt, inp).middle), count(c)) for inp, comps, _ in rows for c in comps]
        )
    return Pairs(prefix, seqs)
