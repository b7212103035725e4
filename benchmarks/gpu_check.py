"""A GPU check of the scorer, prepared for a machine that cannot download: random-weight models, one JSON out.

    # here, once: the bundled tokenizer and model config (~3.5 MB, small enough to carry)
    python benchmarks/gpu_check.py --save-tokenizer gpu-assets
    # on the GPU machine (sized for under 8 minutes on one H100; not yet run on a GPU):
    python benchmarks/gpu_check.py --tokenizer gpu-assets --json gpu_check.json
    # on CPU at a small size (what tests/unit/benchmarks/test_gpu_check.py runs):
    python benchmarks/gpu_check.py --device cpu --small --json gpu_check.json

No weights travel. Llama-architecture models are built from config with random weights at two sizes: the
bundled SmolLM2's shape (its config.json, saved with the tokenizer) and ~1B parameters (Llama-3.2-1B's shape
with the bundled vocabulary); `--small` builds one 2-layer model instead. Random weights carry no signal, so
the checks are about numbers, not quality: the same prompts and examples (benchmarks/workload.py: 13
candidates, zero-shot and 3-shot) go through

- parity: the scorer (fp32, the device's default settings) against the fp32 reference loop
  `pmpo.scoring.reference.naive_nll`, pair by pair on a subset;
- prefix: reuse of the prompt's KV cache (both prefix modes, `expand` and `shared`) against no reuse, every pair;
- bf16 against fp32: the 13 candidates' ranking by loss (Kendall tau, the same best candidate), with the
  spread of the fp32 losses beside the bf16 error, since near-ties among random-weight losses may swap.

It measures tokens/s of each run (the tokens a per-example loop feeds, as bench_loss.py counts them), the
fraction of the bf16 matmul peak measured in the same run (square bf16 matmuls on CUDA, timed with
synchronize; SmolLM2-shaped ones on CPU), peak GPU memory, and the batch shapes the scorer chose.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload as wl  # noqa: E402
from measure import ModelShape, Pairs, matmul_peak, pair_lengths, peak_rss_gib  # noqa: E402

from pmpo.models.loading import (  # noqa: E402
    DEFAULT_MODEL,
    LoadedModel,
    load_text_side,
    resolve_checkpoint,
    resolve_dtype,
)
from pmpo.scoring import loss as loss_module  # noqa: E402
from pmpo.scoring.loss import Scorer, ScorerSettings, example_rows  # noqa: E402
from pmpo.scoring.reference import naive_nll  # noqa: E402

# Llama-3.2-1B's layers with the bundled 49k vocabulary: ~1.07B parameters.
ONE_B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
)
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
PARITY_NATS = 1e-3  # fp32 scorer vs the fp32 reference loop, summed NLL per pair


def main(argv: list[str] | None = None) -> dict:
    """Run the check; write --json; return the report."""
    args = _parse(argv)
    if args.save_tokenizer:
        save_assets(Path(args.save_tokenizer))
        print(f"saved the bundled tokenizer and config.json to {args.save_tokenizer}")
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()
    tokenizer, placement, base = _assets(args.tokenizer)
    n_examples = args.examples or (3 if args.small else 50)
    work = wl.build(args.task, 13, n_examples)
    report: dict = {
        "machine": _machine(device),
        "small": args.small,
        "workload": {"source": work.source, "candidates": len(work.zero_shot), "examples": len(work.train)},
        "peak_gflops": _peaks(device, seconds=0.5 if args.small else 1.5),
    }
    sizes = {"small": _config(base, SMALL)} if args.small else {"bundled": base, "1b": _config(base, ONE_B)}
    report["sizes"] = {}
    for name, config in sizes.items():
        t = time.perf_counter()
        report["sizes"][name] = check_size(config, tokenizer, placement, device, work, report["peak_gflops"], args)
        report["sizes"][name]["seconds"] = time.perf_counter() - t
        print(f"{name}: {_summary_line(report['sizes'][name])}", file=sys.stderr, flush=True)
    report["checks"] = _checks(report["sizes"])
    report["peak_rss_gib"] = peak_rss_gib()
    report["seconds"] = time.perf_counter() - started
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report["checks"], indent=2))
    return report


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--small", action="store_true", help="one 2-layer model and 3 examples (CPU, tests)")
    p.add_argument("--tokenizer", metavar="DIR", help="a saved tokenizer (+ config.json); default: the bundled one")
    p.add_argument("--save-tokenizer", metavar="DIR", help="save the bundled tokenizer and config.json to DIR, exit")
    p.add_argument("--task", default="object_counting", help="BIG-bench sample in ../shared/data/bbh, if there")
    p.add_argument("--examples", type=int, default=0, help="examples per candidate (0: 50, --small 3)")
    p.add_argument("--naive-pairs", type=int, default=0, help="pairs per workload for parity (0: 24, --small 6)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args(argv)


def save_assets(directory: Path) -> None:
    """The bundled model's tokenizer (with its chat template) and config.json: all a random twin needs."""
    from transformers import AutoConfig

    load_text_side().tokenizer.save_pretrained(directory)
    AutoConfig.from_pretrained(resolve_checkpoint(DEFAULT_MODEL)[0]).save_pretrained(directory)


def _assets(directory: str | None):
    """(tokenizer, placement, the bundled model's config) from a saved directory or the bundled model."""
    from transformers import AutoConfig, AutoTokenizer

    if directory:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        config = AutoConfig.from_pretrained(directory)
    else:
        text = load_text_side()
        tokenizer = text.tokenizer
        config = AutoConfig.from_pretrained(resolve_checkpoint(DEFAULT_MODEL)[0])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    placement = "system" if getattr(tokenizer, "chat_template", None) else "plain"
    return tokenizer, placement, config


def _config(base, shape: dict):
    config = copy.deepcopy(base)
    for key, value in shape.items():
        setattr(config, key, value)
    config.head_dim = config.hidden_size // config.num_attention_heads
    return config


def build(config, tokenizer, placement: str, device: torch.device, seed: int = 0) -> LoadedModel:
    """A randomly initialised fp32 causal LM of `config`, created on `device` (no weights loaded)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    return _loaded(model, tokenizer, placement, device, f"random:{config.num_hidden_layers}x{config.hidden_size}")


def _loaded(model, tokenizer, placement, device, identity) -> LoadedModel:
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        identity=identity,
        placement=placement,
        device=device,
        dtype=next(model.parameters()).dtype,
        context_length=int(getattr(model.config, "max_position_embeddings", 2048)),
        n_params=sum(p.numel() for p in model.parameters()),
    )


def check_size(config, tokenizer, placement, device, work, peaks: dict, args) -> dict:
    """Every check and measurement on one model size."""
    lm32 = build(config, tokenizer, placement, device)
    shape = ModelShape.of(lm32)
    out: dict = {
        "params": lm32.n_params,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "default_prefix_attention": "expand" if device.type == "cuda" else "shared",
    }
    n_naive = args.naive_pairs or (6 if args.small else 24)
    for name, prompts in (("zero_shot", work.zero_shot), ("few_shot", work.few_shot)):
        pairs = pair_lengths(lm32, prompts, work.train)
        runs = {
            "fp32": _timed(lm32, prompts, work, ScorerSettings(), pairs, shape, peaks),
            "fp32_expand": _timed(lm32, prompts, work, ScorerSettings(prefix_attention="expand"), pairs, shape, peaks),
            "fp32_shared": _timed(lm32, prompts, work, ScorerSettings(prefix_attention="shared"), pairs, shape, peaks),
            "fp32_no_reuse": _timed(lm32, prompts, work, ScorerSettings(reuse_prefix=False), pairs, shape, peaks),
        }
        lm16 = _loaded(copy.deepcopy(lm32.model).to(torch.bfloat16), tokenizer, placement, device, lm32.identity)
        runs["bf16"] = _timed(lm16, prompts, work, ScorerSettings(), pairs, shape, peaks)
        del lm16
        base = runs["fp32"].pop("matrix")
        section = {"prefix_tokens_mean": float(np.mean(pairs.prefix)), "workload_tokens": pairs.workload_tokens()}
        section["parity"] = _parity(lm32, prompts, work, base, n_naive)
        section["prefix"] = {
            mode: float(np.max(np.abs(runs[mode].pop("matrix").nll - base.nll)))
            for mode in ("fp32_expand", "fp32_shared", "fp32_no_reuse")
        }
        section["bf16_ranking"] = _ranking(base, runs["bf16"].pop("matrix"))
        section["runs"] = runs
        section["speedup_prefix_reuse"] = runs["fp32_no_reuse"]["seconds"] / runs["fp32"]["seconds"]
        section["speedup_bf16"] = runs["fp32"]["seconds"] / runs["bf16"]["seconds"]
        out[name] = section
    return out


def _timed(lm, prompts, work, settings: ScorerSettings, pairs, shape, peaks) -> dict:
    """Score the whole workload once with a fresh scorer; seconds, tokens/s, memory, batch shapes."""
    batches: list[tuple[int, int]] = []
    original = loss_module.plan

    def recording(*a, **k):
        for batch in original(*a, **k):
            batches.append(tuple(batch.ids.shape))
            yield batch

    Scorer(lm, settings).loss_matrix([prompts[-1]], work.train[:2])  # warm-up: kernel choice, allocator, hooks
    scorer = Scorer(lm, settings)
    _sync(lm.device)
    if lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(lm.device)
    loss_module.plan = recording
    try:
        start = time.perf_counter()
        matrix = scorer.loss_matrix(list(prompts), work.train)
        _sync(lm.device)
        seconds = time.perf_counter() - start
    finally:
        loss_module.plan = original
    rows = [r for r, _ in batches]
    tokens = pairs.workload_tokens()
    if not settings.reuse_prefix:  # every pair runs its whole text, logits still at target positions only
        pairs = Pairs([0] * len(pairs.prefix), [[(p + m, t) for m, t in s] for p, s in zip(pairs.prefix, pairs.seqs)])
    flops = pairs.scorer_flops(shape)
    return {
        "matrix": matrix,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "tokens_computed": scorer.tokens_computed,
        "prefix_fallbacks": scorer.prefix_fallbacks,
        "gflops": flops / seconds / 1e9,
        "fraction_of_bf16_peak": flops / seconds / 1e9 / peaks["bfloat16"],
        "peak_gpu_gib": torch.cuda.max_memory_allocated(lm.device) / 2**30 if lm.device.type == "cuda" else None,
        "token_budget": settings.token_budget or (8192 if lm.device.type == "cuda" else 2048),
        "batches": len(batches),
        "rows_per_batch_max": max(rows, default=0),
        "rows_per_batch_median": float(np.median(rows)) if rows else 0.0,
        "padded_width_max": max((w for _, w in batches), default=0),
    }


def _parity(lm32, prompts, work, matrix, n_pairs: int) -> dict:
    """The scorer's summed NLL against naive_nll on pairs spread over the candidates."""
    flat = [(inp, c) for e in work.train for inp, comps, _ in [example_rows(e)] for c in comps]
    owner = [i for i, e in enumerate(work.train) for _ in example_rows(e)[1]]
    picks = [(p, k) for k in range(len(flat)) for p in (0, len(prompts) // 2, len(prompts) - 1)][:n_pairs]
    diffs, tokens = [], []
    for p, k in picks:
        if len(example_rows(work.train[owner[k]])[1]) > 1:
            continue  # preference examples: the matrix holds the chosen output's NLL only
        nll, n = naive_nll(lm32, prompts[p], *flat[k])
        diffs.append(abs(nll - matrix.nll[p, owner[k]]))
        tokens.append(n)
    return {
        "pairs": len(diffs),
        "max_abs_nats": float(max(diffs)),
        "mean_abs_nats": float(np.mean(diffs)),
        "target_tokens_max": int(max(tokens)),
        "ok": bool(max(diffs) <= PARITY_NATS),
    }


def _ranking(fp32, bf16) -> dict:
    """Does bf16 rank the candidates as fp32 does?"""
    a, b = fp32.prompt_loss(), bf16.prompt_loss()
    order_a, order_b = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    return {
        "candidates": len(a),
        "kendall_tau": kendall_tau(a, b),
        "same_best": bool(order_a[0] == order_b[0]),
        "same_order": bool((order_a == order_b).all()),
        "max_abs_loss_diff": float(np.max(np.abs(a - b))),
        "fp32_loss_spread": float(a.max() - a.min()),
        "fp32_best_gap": float(np.sort(a)[1] - np.sort(a)[0]),
    }


def kendall_tau(a, b) -> float:
    """Kendall's tau-a between two score vectors (1: the same order)."""
    n, total = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            total += np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return float(total / (n * (n - 1) / 2))


def _checks(sizes: dict) -> dict:
    """The headline: worst case over sizes and workloads."""
    sections = [s[w] for s in sizes.values() for w in ("zero_shot", "few_shot")]
    return {
        "parity_max_abs_nats": max(s["parity"]["max_abs_nats"] for s in sections),
        "parity_ok": all(s["parity"]["ok"] for s in sections),
        "prefix_max_abs_nats": max(v for s in sections for v in s["prefix"].values()),
        "bf16_kendall_tau_min": min(s["bf16_ranking"]["kendall_tau"] for s in sections),
        "bf16_same_best": all(s["bf16_ranking"]["same_best"] for s in sections),
        "fraction_of_bf16_peak_max": max(s["runs"]["bf16"]["fraction_of_bf16_peak"] for s in sections),
        "tokens_per_s": {
            f"{size}/{w}/{run}": sizes[size][w]["runs"][run]["tokens_per_s"]
            for size in sizes
            for w in ("zero_shot", "few_shot")
            for run in ("fp32", "bf16")
        },
    }


def _peaks(device: torch.device, seconds: float) -> dict:
    """Best matmul GFLOP/s in bf16 and fp32 on `device`, measured now."""
    if device.type == "cuda":
        return {"bfloat16": cuda_matmul_peak(torch.bfloat16), "float32": cuda_matmul_peak(torch.float32)}
    return {"bfloat16": matmul_peak(torch.bfloat16, seconds).wall, "float32": matmul_peak(torch.float32, seconds).wall}


def cuda_matmul_peak(dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Best GFLOP/s of square matmuls on the current GPU (synchronised timing, after warm-up)."""
    best = 0.0
    for n in (4096, 8192):
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            for _ in range(10):
                a @ b
            runs += 10
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * runs / (time.perf_counter() - start) / 1e9)
        del a, b
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine(device: torch.device) -> dict:
    out = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype_auto": str(resolve_dtype("auto", device)).removeprefix("torch."),
    }
    if device.type == "cuda":
        out |= {
            "gpu": torch.cuda.get_device_name(device),
            "capability": list(torch.cuda.get_device_capability(device)),
            "cuda": torch.version.cuda,
            "gpu_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30,
            "is_bf16_supported": torch.cuda.is_bf16_supported(),
            "is_bf16_supported_native": torch.cuda.is_bf16_supported(including_emulation=False),
        }
    return out


def _summary_line(s: dict) -> str:
    few = s["few_shot"]
    return (
        f"{s['params'] / 1e6:.0f}M params, parity {few['parity']['max_abs_nats']:.1e}, "
        f"prefix {max(few['prefix'].values()):.1e}, bf16 tau {few['bf16_ranking']['kendall_tau']:.2f}, "
        f"3-shot fp32 {few['runs']['fp32']['tokens_per_s']:.0f} tok/s, bf16 {few['runs']['bf16']['tokens_per_s']:.0f}"
    )


if __name__ == "__main__":
    main()
