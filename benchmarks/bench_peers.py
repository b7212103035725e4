"""pmpo's scorer against lm-evaluation-harness's HFLM on the same (context, continuation) pairs.

    pip install -e '.[bench]'                           # lm-eval, the peer (not a runtime dependency)
    python benchmarks/bench_peers.py                    # 13 candidates x 50 examples, zero-shot and 3-shot
    python benchmarks/bench_peers.py --quick            # smoke run: 3 candidates x 6 examples
    python benchmarks/bench_peers.py --threads 1 --json peers.json

lm-eval's `HFLM.loglikelihood` is what a user reaches for to get reference log-likelihoods: summed log-probs
of (context, continuation) pairs. Both tools get the same torch model object and tokenizer (the bundled SmolLM2,
fp32 for parity), the same threads, and the same requests: `Instance(request_type="loglikelihood",
arguments=(context, continuation))` built from pmpo's rendered contexts and reference outputs (checked equal
to what pmpo's scorer tokenises, pair by pair).

One difference is in lm-eval's text entry, not its scoring: `HFLM.loglikelihood` moves trailing whitespace of the
context into the continuation (`TemplateLM._encode_pair`), and a chat-template context ends with "\\n", so the
text entry would also score the newline token after "assistant". The benchmark therefore tokenises each
Instance with lm-eval's own `_encode_pair` (the same whole-text ids as pmpo's, checked pair by pair; the
tokenizer adds no BOS and the chat template writes its own, so BOS handling agrees), puts the split where pmpo's
reference output starts, and calls `HFLM._loglikelihood_tokens`, the method `loglikelihood` hands its tokens to.
That tokenisation is inside lm-eval's timed region. The text entry's extra newline term is reported separately
(`text_entry`), on one candidate.

One run, alternating order: the workload is cut into one chunk per candidate prompt, and the two tools take
turns going first, so load from other processes falls on both alike. tokens/s counts the same tokens for both
(every pair's whole text: prompt + input + reference). Peak memory is the resident set sampled while each
tool runs (the process high-water mark is reported too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload as wl  # noqa: E402
from measure import Timer, peak_rss_gib  # noqa: E402

from pmpo.models.loading import ModelSettings, load_model  # noqa: E402
from pmpo.scoring.loss import Scorer, example_rows  # noqa: E402
from pmpo.text.encoding import encode_many, render_pairs  # noqa: E402

TARGETS = {"few_shot": 3.0, "zero_shot": 1.2}  # pmpo tokens/s over lm-eval's (issue 22)
PARITY_NATS = 1e-3  # fp32


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison, print the table, write --json; return the report."""
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_cand, n_ex = (3, 6) if args.quick else (args.candidates, args.examples)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = load_model(ModelSettings(dtype="float32"))
    hflm = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=args.peer_batch_size)
    work = wl.build(args.task, n_cand, n_ex)
    report: dict = {
        "machine": _machine(),
        "quick": args.quick,
        "model": lm.identity,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "lm_eval": _version("lm_eval"),
        "peer_batch_size": args.peer_batch_size,
        "workload": {"source": work.source, "candidates": len(work.zero_shot), "examples": len(work.train)},
    }
    memory = _RssSampler()
    chunk = 0
    with memory:
        _warm_up(lm, hflm, work)
        for name, prompts in (("zero_shot", work.zero_shot), ("few_shot", work.few_shot)):
            run = _Run()
            scorer = Scorer(lm)
            for prompt in prompts:
                requests = _requests(lm, prompt, work.train, Instance)
                tools = [("pmpo", _pmpo), ("lm_eval", _lm_eval)]
                for tool, score in tools if chunk % 2 == 0 else tools[::-1]:
                    with memory.tagged(tool), Timer() as t:
                        values = score(scorer if tool == "pmpo" else hflm, prompt, requests)
                    run.add(tool, t, values)
                run.tokens += sum(len(r.ids) for r in requests)
                run.target_tokens += sum(len(r.ids) - r.start for r in requests)
                chunk += 1
            report[name] = run.summary(memory)
            log(
                f"{name}: pmpo {run.seconds['pmpo']:.1f}s, lm-eval {run.seconds['lm_eval']:.1f}s, "
                f"parity {report[name]['parity_max_abs_nats']:.2e}"
            )
        report["text_entry"] = _text_entry(lm, hflm, work, Instance)
    report["peak_rss_gib_process"] = peak_rss_gib()
    report["targets"] = {
        **{
            f"speedup_{k}": {"target": v, "value": report[k]["speedup"], "met": report[k]["speedup"] >= v}
            for k, v in TARGETS.items()
        },
        "parity": {
            "target": PARITY_NATS,
            "value": max(report[k]["parity_max_abs_nats"] for k in TARGETS),
            "met": max(report[k]["parity_max_abs_nats"] for k in TARGETS) <= PARITY_NATS,
        },
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(table(report))
    return report


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 candidates x 6 examples")
    p.add_argument("--task", default="object_counting", help="BIG-bench sample in ../shared/data/bbh")
    p.add_argument("--candidates", type=int, default=13)
    p.add_argument("--examples", type=int, default=50)
    # lm-eval's own default is 1. It sorts requests by length, so a batch pads little; but it computes and
    # log-softmaxes logits at every position (vocab 49k), so memory grows with batch x length.
    p.add_argument("--peer-batch-size", type=int, default=8, help="lm-eval's batch_size (requests per forward)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for both (0: torch's default)")
    return p.parse_args(argv)


@dataclass(frozen=True)
class _Request:
    """One pair as both tools see it."""

    input: object  # pmpo's example input
    completion: str
    instance: object  # lm-eval's Instance(request_type="loglikelihood", arguments=(context, continuation))
    ids: tuple[int, ...]  # pmpo's ids of the whole text
    start: int  # where pmpo's reference output starts in `ids`


def _requests(lm, prompt: str, examples, Instance) -> list[_Request]:
    """Every (input, completion) of `examples` under `prompt`, with its Instance; checks the texts match."""
    tok = lm.tokenizer
    pairs = [(inp, c) for e in examples for inp, comps, _ in [example_rows(e)] for c in comps]
    texts = render_pairs(tok, lm.placement, prompt, pairs)
    encoded = encode_many(tok, lm.placement, prompt, pairs)
    out = []
    for k, ((inp, c), (text, at), enc) in enumerate(zip(pairs, texts, encoded)):
        context, continuation = text[:at], text[at:]
        if continuation != c or not tok.decode(enc.ids[enc.target_start :]).strip().endswith(c.strip()):
            raise AssertionError(f"pair {k}: the continuation is not the reference output")
        instance = Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=k)
        out.append(_Request(inp, c, instance, enc.ids, enc.target_start))
    return out


def _pmpo(scorer: Scorer, prompt: str, requests: list[_Request]) -> np.ndarray:
    nll, _ = scorer.completions(prompt, [(r.input, r.completion) for r in requests])
    return -nll


def _lm_eval(hflm, prompt: str, requests: list[_Request]) -> np.ndarray:
    """lm-eval's tokenisation of each Instance, split where pmpo's reference starts, scored by HFLM."""
    reqs = []
    for r in requests:
        context, continuation = r.instance.args
        ctx_enc, cont_enc = hflm._encode_pair(context, continuation)
        whole = [*ctx_enc, *cont_enc]
        if tuple(whole) != r.ids:
            raise AssertionError(f"lm-eval tokenises request {r.instance.idx} differently from pmpo")
        reqs.append(((context, continuation), whole[: r.start], whole[r.start :]))
    return np.array([logprob for logprob, _ in hflm._loglikelihood_tokens(reqs, disable_tqdm=True)])


def _warm_up(lm, hflm, work) -> None:
    """One pair through each tool first: thread pools, kernel choice, the scorer's attention hook."""
    from lm_eval.api.instance import Instance

    requests = _requests(lm, work.zero_shot[-1], work.train[:1], Instance)
    _pmpo(Scorer(lm), work.zero_shot[-1], requests)
    _lm_eval(hflm, work.zero_shot[-1], requests)


def _text_entry(lm, hflm, work, Instance) -> dict:
    """lm-eval's text entry on the incumbent's zero-shot pairs: what moving the trailing newline adds."""
    requests = _requests(lm, work.zero_shot[0], work.train, Instance)
    text = np.array([v for v, _ in hflm.loglikelihood([r.instance for r in requests], disable_tqdm=True)])
    same = _lm_eval(hflm, work.zero_shot[0], requests)
    moved = [len(hflm._encode_pair(*r.instance.args)[1]) - (len(r.ids) - r.start) for r in requests]
    return {
        "pairs": len(requests),
        "extra_tokens_scored": sorted(set(moved)),
        "extra_nats_max": float(np.max(np.abs(text - same))),
        "extra_nats_mean": float(np.mean(np.abs(text - same))),
    }


@dataclass
class _Run:
    """Seconds and log-probs of both tools over one workload."""

    seconds: dict = field(default_factory=lambda: {"pmpo": 0.0, "lm_eval": 0.0})
    cpu: dict = field(default_factory=lambda: {"pmpo": 0.0, "lm_eval": 0.0})
    values: dict = field(default_factory=lambda: {"pmpo": [], "lm_eval": []})
    tokens: int = 0
    target_tokens: int = 0

    def add(self, tool: str, t: Timer, values: np.ndarray) -> None:
        self.seconds[tool] += t.wall
        self.cpu[tool] += t.cpu
        self.values[tool].extend(values.tolist())

    def summary(self, memory: "_RssSampler") -> dict:
        a, b = np.array(self.values["pmpo"]), np.array(self.values["lm_eval"])
        rate = {k: self.tokens / v for k, v in self.seconds.items()}
        return {
            "pairs": len(a),
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
            "parity_max_abs_nats": float(np.max(np.abs(a - b))),
            "parity_mean_abs_nats": float(np.mean(np.abs(a - b))),
            "pmpo_seconds": self.seconds["pmpo"],
            "lm_eval_seconds": self.seconds["lm_eval"],
            "pmpo_cpu_seconds": self.cpu["pmpo"],
            "lm_eval_cpu_seconds": self.cpu["lm_eval"],
            "pmpo_tokens_per_s": rate["pmpo"],
            "lm_eval_tokens_per_s": rate["lm_eval"],
            "speedup": rate["pmpo"] / rate["lm_eval"],
            "speedup_cpu_time": self.cpu["lm_eval"] / self.cpu["pmpo"],
            "pmpo_peak_rss_gib": memory.peak["pmpo"],
            "lm_eval_peak_rss_gib": memory.peak["lm_eval"],
        }


class _RssSampler:
    """Peak resident memory while each tool runs, sampled from /proc every few ms (one process holds both)."""

    def __init__(self, every_s: float = 0.005):
        self.every_s = every_s
        self.peak = {"pmpo": 0.0, "lm_eval": 0.0}
        self._tag: str | None = None
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "_RssSampler":
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def tagged(self, tool: str):
        sampler = self

        class _Tag:
            def __enter__(self):
                sampler._tag = tool
                sampler._sample()

            def __exit__(self, *exc):
                sampler._sample()
                sampler._tag = None

        return _Tag()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def _sample(self) -> None:
        tag = self._tag
        if tag is None:
            return
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * self._page / 2**30
        self.peak[tag] = max(self.peak[tag], rss)


def table(r: dict) -> str:
    """The report as aligned `name  value` lines."""
    m, w = r["machine"], r["workload"]
    rows = [
        (
            "machine",
            f"{m['cores']} cores, torch {m['torch']}, {m['torch_threads']} threads, "
            f"load avg at start {m['load_average_start']:.1f}",
        ),
        ("model", f"{r['model']} ({r['dtype']}), lm-eval {r['lm_eval']} (batch_size {r['peer_batch_size']})"),
        ("workload", f"{w['candidates']} candidates x {w['examples']} examples of {w['source']}"),
        ("", ""),
    ]
    for name, key in (("zero-shot", "zero_shot"), ("3-shot", "few_shot")):
        s = r[key]
        rows += [
            (name, f"{s['pairs']} pairs, {s['tokens']} tokens ({s['target_tokens']} scored)"),
            (
                "  parity",
                f"max |diff| {s['parity_max_abs_nats']:.2e} nats per pair (mean {s['parity_mean_abs_nats']:.1e})",
            ),
            (
                "  pmpo",
                f"{s['pmpo_tokens_per_s']:.0f} tokens/s ({s['pmpo_seconds']:.1f} s), "
                f"peak RSS {s['pmpo_peak_rss_gib']:.2f} GiB",
            ),
            (
                "  lm-eval",
                f"{s['lm_eval_tokens_per_s']:.0f} tokens/s ({s['lm_eval_seconds']:.1f} s), "
                f"peak RSS {s['lm_eval_peak_rss_gib']:.2f} GiB",
            ),
            ("  ratio", f"{s['speedup']:.2f}x by wall time, {s['speedup_cpu_time']:.2f}x by CPU time"),
        ]
    te = r["text_entry"]
    rows += [
        ("", ""),
        (
            "text entry",
            f"HFLM.loglikelihood on {te['pairs']} pairs scores {te['extra_tokens_scored']} more "
            f"token(s) (the context's trailing newline): {te['extra_nats_max']:.1e} nats max",
        ),
        ("process peak", f"{r['peak_rss_gib_process']:.2f} GiB RSS high-water"),
        ("", ""),
    ]
    for key, t in r["targets"].items():
        op = "<=" if key == "parity" else ">="
        rows.append((key, f"{t['value']:.3g} (target {op} {t['target']}): {'met' if t['met'] else 'NOT met'}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" if k else "" for k, v in rows)


def _machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_start": os.getloadavg()[0],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
