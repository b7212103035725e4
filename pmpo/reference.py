"""The naive loss loop a user would write: one example at a time, full logits, `model(ids, labels=...)`.

It is the correctness reference for the fast scorer and the speed baseline of the benchmarks.
"""

from __future__ import annotations

import torch

from pmpo.loss import _encode
from pmpo.models import LoadedModel
from pmpo.prompting import render


@torch.inference_mode()
def naive_nll(lm: LoadedModel, prompt: str, input_text: str, completion: str) -> tuple[float, int]:
    """Summed NLL of `completion` and its token count, from one unbatched forward pass."""
    context = render(lm.tokenizer, lm.placement, prompt, input_text)
    # Same token ids as the scorer: pieces are tokenised separately, so both see identical sequences.
    prefix = _encode(lm.tokenizer, context.prefix, leading=True)
    context_ids = prefix + _encode(lm.tokenizer, context.middle)
    target = _encode(lm.tokenizer, completion)
    ids = torch.tensor([context_ids + target], device=lm.device)
    labels = ids.clone()
    labels[0, : len(context_ids)] = -100  # only target tokens count
    mean = lm.model(input_ids=ids, labels=labels).loss.float().item()
    return mean * len(target), len(target)
