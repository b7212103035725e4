"""One SHORT rewrite request (n=4) on the demo task: in-process vs through `transformers serve` of the same model.

python benchmarks/bench_chat_rewriter.py     # starts the server (testkit.chat_server) and stops it
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pmpo.data import load_dataset, split_dataset
from pmpo.models.loading import ModelSettings, load_model
from pmpo.rewriting.backends import ChatRewriter
from pmpo.rewriting.proposal import propose
from pmpo.rewriting.settings import RewriterSettings, RewriteSettings
from pmpo.scoring.loss import Scorer
from testkit.chat_server import transformers_serve


def main() -> None:
    """Time one request each way and print what each kept."""
    lm = load_model(ModelSettings(dtype="float32"))
    data = load_dataset("builtin:sentiment")
    split = split_dataset(data, seed=0)
    kw = dict(
        prompt=data.default_prompt,
        example=split.train.examples[0],
        effects=(),
        task_description=data.description,
        settings=RewriteSettings(template="short", n_variants=4),
        seed=0,
        scorer=Scorer(lm),
    )
    start = time.perf_counter()
    local = propose(lm, **kw)
    local_s = time.perf_counter() - start
    with transformers_serve(Path(tempfile.mkdtemp()) / "serve.log") as server:
        settings = RewriterSettings(
            backend="openai", base_url=server.base_url, model=server.model, timeout_s=600, max_retries=0
        )
        chat = ChatRewriter.connect(settings)
        start = time.perf_counter()
        remote = propose(chat, **kw)
        remote_s = time.perf_counter() - start
    for name, seconds, outcome, usage in (
        ("in-process", local_s, local, lm.usage),
        ("served", remote_s, remote, chat.usage),
    ):
        rejected = {k: v for k, v in outcome.rejected.items() if v}
        print(
            f"{name:>10}: {seconds:.1f} s, kept {len(outcome.variants)}/4, rejected {rejected}, "
            f"tokens generated {usage.tokens_generated}"
        )
    print("served variants:", remote.variants)


if __name__ == "__main__":
    main()
