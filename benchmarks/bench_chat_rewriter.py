"""One SHORT rewrite request (n=4) on the demo task: in-process vs through `transformers serve` of the same model.

Run: PYTHONPATH=. python benchmarks/bench_chat_rewriter.py (starts the server on port 8933 and stops it).
"""
import os, subprocess, sys, time, httpx
from pathlib import Path
from pmpo.models.bundled import bundled_checkpoint
from pmpo.data import load_dataset, split_dataset
from pmpo.scoring.loss import Scorer
from pmpo.models.loading import ModelSettings, load_model
from pmpo.rewriting.proposal import RewriteSettings, propose
from pmpo.rewriting.backends import ChatRewriter
from pmpo.rewriting.settings import RewriterSettings

directory, _ = bundled_checkpoint()
proc = subprocess.Popen([str(Path(sys.executable).with_name("transformers")), "serve", str(directory), "--host", "127.0.0.1",
                         "--port", "8933", "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        env={**os.environ, "HF_HUB_OFFLINE": "1"})
try:
    lm = load_model(ModelSettings(dtype="float32"))
    data = load_dataset("builtin:sentiment"); split = split_dataset(data, seed=0)
    kw = dict(prompt=data.default_prompt, example=split.train.examples[0], effects=(), task_description=data.description,
              settings=RewriteSettings(template="short", n_variants=4), seed=0, scorer=Scorer(lm))
    t = time.perf_counter(); local = propose(lm, **kw); tl = time.perf_counter() - t
    for _ in range(120):
        try:
            if httpx.get("http://127.0.0.1:8933/health", timeout=2).status_code == 200: break
        except httpx.HTTPError: pass
        time.sleep(1)
    chat = ChatRewriter.connect(RewriterSettings(
        backend="openai", base_url="http://127.0.0.1:8933/v1", model=str(directory), timeout_s=600, max_retries=0
    ))
    t = time.perf_counter(); remote = propose(chat, **kw); tr = time.perf_counter() - t
    print(f"in-process: {tl:.1f} s, kept {len(local.variants)}/4, rejected { {k: v for k, v in local.rejected.items() if v} }, tokens generated {lm.usage.tokens_generated}")
    print(f"served:     {tr:.1f} s, kept {len(remote.variants)}/4, rejected { {k: v for k, v in remote.rejected.items() if v} }, tokens generated {chat.usage.tokens_generated}")
    print("served variants:", remote.variants)
finally:
    proc.terminate(); proc.wait(20)
