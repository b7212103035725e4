"""One process of the shared-store test: load the model, wait at a barrier, run one loss task, say what it did.

Usage: python store_worker.py MODEL_DIR BARRIER_FILE OUT_JSON (OUT_JSON.ready appears at the barrier). The result
store is $PMPO_RESULTS_DIR (shared by the processes under test); each process has its own PREFECT_HOME (its own
local API). Prints nothing; writes
{"state": "Completed" | "Cached", "go": t, "end": t} (time.time() seconds) to OUT_JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import tasks  # noqa: F401  (sets the offline defaults before prefect loads)


def main(model_dir: str, barrier: str, out: str) -> None:
    from prefect import task

    from pmpo.data import load_dataset
    from pmpo.models.loading import ModelSettings
    from tasks import steps as t
    from tasks.caching import with_storage
    from tasks.models import loaded, model_ref

    ref = model_ref(ModelSettings(spec=model_dir, dtype="float32"))
    loaded(ref)  # before the barrier: the processes then differ only in when they reach the task
    task(lambda: None, name="warm-up")()  # starts this process's Prefect API before the barrier too
    data = load_dataset("builtin:sentiment", limit=40)
    prompts = [f"Prompt number {i}: read the review and answer with one word." for i in range(12)]
    loss = with_storage(t.loss_matrix)
    Path(out + ".ready").touch()
    while not Path(barrier).exists():
        time.sleep(0.02)
    go = time.time()
    state = loss(model=ref, prompts=prompts, data=data, iteration=0, return_state=True)
    state.result()
    Path(out).write_text(json.dumps({"state": state.name, "go": go, "end": time.time()}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
