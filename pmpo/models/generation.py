"""Text generation for the rewrite step: sampled variants (paper: n = 4 per request) and batched greedy decoding.

PMPO never samples to *select* prompts (selection is by loss); generation is only used to propose rewrites
(sampling) and to mark prompt units or produce answers for evaluation (greedy). Inputs are already-rendered
texts (e.g. from `pmpo.text.rendering.chat_request`) or token ids (`pmpo.text.encoding.encode(...).ids`, the ids the scorer
uses); texts are tokenised by `pmpo.text.encoding.encode_text`, with the same one-BOS rule as scoring.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from pmpo.models.loading import LoadedModel
from pmpo.models.usage import produced_tokens
from pmpo.text.encoding import encode_text

# End-of-turn markers of common chat templates; generation stops at whichever the tokenizer knows,
# because some models' generation config names only the end-of-document token as eos.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def sample(
    lm: LoadedModel,
    text: str,
    n: int,
    *,
    seed: int,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_p: float = 0.95,
    stop: Sequence[str] = (),
) -> list[str]:
    """n sampled continuations of `text`; the same seed gives the same outputs, global RNG untouched.

    A sequence also ends once its text, leading whitespace aside, contains one of the `stop` strings (it
    stays in the output): this only saves time, since callers parse the text anyway.
    """
    if n < 1:
        return []
    ids = _encode(lm, text)  # [1, T]
    config = _config(lm, max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=n)
    criteria = StoppingCriteriaList([_StopAfterText(lm.tokenizer, ids.shape[1], stop)] if stop else [])
    devices = [lm.device] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        out = lm.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config, stopping_criteria=criteria
        )  # [n, T + new]
    stops = set(config.eos_token_id)
    _count(lm, out, ids.shape[1], stops, config.pad_token_id)
    return [_decode(lm, row[ids.shape[1] :].tolist(), stops) for row in out]


def greedy(
    lm: LoadedModel, texts: Sequence[str | Sequence[int]], *, max_new_tokens: int = 32, batch_size: int = 16
) -> list[str]:
    """Greedy continuations of many texts or token id sequences, batched with left padding; equal to each alone."""
    encoded = [encode_text(lm.tokenizer, t) if isinstance(t, str) else list(t) for t in texts]
    # Batch similar lengths together so little compute is spent on padding; results go back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    results: list[str] = [""] * len(texts)
    config = _config(lm, max_new_tokens, do_sample=False)
    stops = set(config.eos_token_id)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = _left_pad([encoded[i] for i in chunk], config.pad_token_id)  # [B, T] each
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), generation_config=config
            )  # [B, T + new]
        _count(lm, out, ids.shape[1], stops, config.pad_token_id)
        for i, row in zip(chunk, out):
            results[i] = _decode(lm, row[ids.shape[1] :].tolist(), stops)
    return results


def stop_token_ids(lm: LoadedModel) -> list[int]:
    """Token ids that end a reply: the model's eos and any end-of-turn marker its tokenizer knows."""
    ids: set[int] = set()
    for source in (lm.model.generation_config.eos_token_id, lm.tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    vocab = lm.tokenizer.get_vocab()
    ids.update(vocab[token] for token in _END_OF_TURN if token in vocab)
    return sorted(ids)


def stop_texts(tokenizer: Any, limit: int = 4) -> list[str]:
    """Texts that end a reply, for a server's `stop`: the end-of-turn markers the tokenizer knows, then its eos.

    At most `limit` (OpenAI's API refuses more than 4); a server stops at its own eos token anyway.
    """
    vocab = tokenizer.get_vocab()
    found = [token for token in _END_OF_TURN if token in vocab]
    eos = tokenizer.eos_token
    return (found + ([eos] if eos and eos not in found else []))[:limit]


class _StopAfterText(StoppingCriteria):
    """Ends a row once its new text contains a stop string after some non-space text.

    transformers' own `stop_strings` would also fire on a stop string the reply merely starts with
    (a small model often opens with a blank line).
    """

    def __init__(self, tokenizer: Any, prompt_len: int, stops: Sequence[str]):
        self.tokenizer, self.prompt_len, self.stops = tokenizer, prompt_len, tuple(stops)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        done = [any(s in t.lstrip() for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # [B]


def _config(lm: LoadedModel, max_new_tokens: int, **kwargs: Any) -> GenerationConfig:
    # A fresh config rather than the model's own: its sampling defaults (temperature, top_k) would
    # otherwise leak into greedy runs and trigger "flag is ignored" warnings; top_k=0 leaves top_p in charge.
    extra = {"top_k": 0} if kwargs.get("do_sample") else {}
    stops = stop_token_ids(lm)
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=_pad_id(lm, stops),
        bos_token_id=lm.tokenizer.bos_token_id,
        **extra,
        **kwargs,
    )


def _pad_id(lm: LoadedModel, stops: list[int]) -> int:
    pad = lm.tokenizer.pad_token_id
    return pad if pad is not None else stops[0]


def _encode(lm: LoadedModel, text: str) -> torch.Tensor:
    ids = encode_text(lm.tokenizer, text)
    return torch.tensor([ids], dtype=torch.long, device=lm.device)


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding keeps every sequence's last token at the end, where generation continues."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def _count(lm: LoadedModel, out: torch.Tensor, width: int, stops: set[int], pad_id: int) -> None:
    """Charge a generate call ([rows, width + new] ids out) to the model's usage: one forward pass per decoding
    step (the first is the prefill of every row's `width` context tokens), and the new tokens each row produced."""
    new_ids = out[:, width:]
    lm.usage.generated(produced_tokens(new_ids.tolist(), stops, pad_id), new_ids.shape[1], out.shape[0] * width)


def _decode(lm: LoadedModel, new_ids: list[int], stops: set[int]) -> str:
    """Decode up to the first stop token (finished rows are padded after it), without special tokens."""
    end = next((i for i, tok in enumerate(new_ids) if tok in stops), len(new_ids))
    return lm.tokenizer.decode(new_ids[:end], skip_special_tokens=True)
