"""The naive loss loop a user would write: one example at a time, full logits, `model(ids, labels=...)`.

It is the correctness reference for the fast scorer and the speed baseline of the benchmarks, so it shares none
of the scorer's tokenising code: the whole text is tokenised the tokenizer's own way (special tokens added by its
post-processor, a doubled BOS dropped) and the target is located with `char_to_token`.
"""

from __future__ import annotations

import torch

from pmpo.models.loading import LoadedModel
from pmpo.text.rendering import render


@torch.inference_mode()
def naive_nll(lm: LoadedModel, prompt: str, input_text: str, completion: str) -> tuple[float, int]:
    """Summed NLL of `completion` and its token count, from one unbatched forward pass."""
    tok = lm.tokenizer
    context = render(tok, lm.placement, prompt, input_text).text
    enc = tok(context + completion)
    ids = enc["input_ids"]
    first = _token_of_first_target_char(enc, len(context), len(context + completion))
    if len(ids) > 1 and tok.bos_token_id is not None and ids[0] == ids[1] == tok.bos_token_id:
        ids, first = ids[1:], first - 1  # the chat template wrote BOS and the post-processor added another
    if tok.eos_token_id is not None and ids[-1] == tok.eos_token_id and not completion.endswith(tok.eos_token):
        ids = ids[:-1]  # a post-processor that appends EOS: not part of the reference output
    ids = torch.tensor([ids], device=lm.device)
    labels = ids.clone()
    labels[0, :first] = -100  # only target tokens count
    n = ids.shape[1] - first
    mean = lm.model(input_ids=ids, labels=labels).loss.float().item()
    return mean * n, n


def _token_of_first_target_char(enc, begin: int, end: int) -> int:
    """The token holding the first completion character that maps to a token (spaces may map to none)."""
    for char in range(begin, end):
        token = enc.char_to_token(char)
        if token is not None:
            return token
    raise ValueError("the completion maps to no token")
