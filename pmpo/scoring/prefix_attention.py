"""Attention over a shared prompt prefix without copying its KV cache into every row of a batch.

Every example of one candidate prompt shares the prefix (the prompt), so its keys and values are computed
once. The plain transformers way to reuse them, a `DynamicCache` whose prefix is expanded to the batch and
concatenated with the new keys, materialises batch x prefix keys and values in every layer: for a 400-token
few-shot prompt on 2 CPU cores that copy, and the mask built for it, took 15-20% of the forward pass and most
of its activation memory. Here the prefix part of the attention is one matrix product against the single
shared copy, and the suffix part a small masked product; the two are joined in one exact softmax (on CPU with
PyTorch's fused attention kernel for each part, joined by their log-sum-exps). Its mask
also lets short sequences share a row (pmpo.scoring.batching). On CUDA, SDPA's fused kernels on the copied cache
were faster for SmolLM2 (fewer launches), so the scorer uses this path on CPU only by default.

transformers has no attention function for this, so it is hand-written and plugged in through its public
`AttentionInterface`: the model's attention implementation becomes a wrapper that takes this path only when
the forward pass carries `pmpo_prefix=...`, and otherwise calls the model's original implementation
(generation, plain forward passes) unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

KWARG = "pmpo_prefix"  # forward-pass keyword that carries a SharedPrefix
# Attention scores held at once, in elements (~128 MB in fp32); larger batches are processed in row chunks
# so a long prompt cannot blow up memory.
_MAX_SCORE_ELEMENTS = 32 * 2**20


@dataclass(frozen=True)
class SharedPrefix:
    """What one forward pass attends to besides its own tokens."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, KV, P, D] of the prefix
    # [B, L, L] True where a token may not see another (packed rows); None: plain causal within each row.
    blocked: torch.Tensor | None = None


def install(model: Any) -> bool:
    """Route `model`'s attention through the shared-prefix wrapper; False where the model can't take it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    config = model.config
    original = getattr(config, "_attn_implementation", None) or "eager"
    if original.startswith("pmpo_prefix"):
        return True
    # Sliding windows and logit soft-capping change the attention maths; those models keep the cache path.
    if getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping", None):
        return False
    if original not in ("sdpa", "eager"):
        return False  # flash / flex kernels have their own masks and layouts: leave them alone
    name = f"pmpo_prefix_{original}"
    AttentionInterface.register(name, _wrapper(original))
    # Without a prefix the wrapper delegates, so it needs the original implementation's mask.
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    try:
        model.set_attn_implementation(name)
    except Exception:  # a model class that fixes its attention: fall back to the cache path
        return False
    return model.config._attn_implementation == name


def _wrapper(original: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import eager_attention_forward

    delegate = eager_attention_forward if original == "eager" else ALL_ATTENTION_FUNCTIONS[original]

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        prefix = kwargs.pop(KWARG, None)
        if prefix is None:
            return delegate(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        prefix_key, prefix_value = prefix.kv[module.layer_idx]
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return shared_prefix_attention(query, key, value, prefix_key, prefix_value, scale, prefix.blocked), None

    return attention


def shared_prefix_attention(
    query: torch.Tensor,  # [B, H, L, D] the batch's suffix queries (positions after the prefix)
    key: torch.Tensor,  # [B, KV, L, D]
    value: torch.Tensor,  # [B, KV, L, D]
    prefix_key: torch.Tensor,  # [1, KV, P, D] shared by every row
    prefix_value: torch.Tensor,  # [1, KV, P, D]
    scale: float,
    blocked: torch.Tensor | None = None,  # [B, L, L] True where a query may not see a key; None: causal
) -> torch.Tensor:
    """Attention of suffix queries over (shared prefix + own earlier tokens); returns [B, L, H, D]."""
    if _FLASH_CPU is not None and query.device.type == "cpu":
        return _attend_flash(query, key, value, prefix_key, prefix_value, scale, blocked)
    batch, heads, length, dim = query.shape
    per_row = heads * length * (prefix_key.shape[2] + length)
    step = max(1, _MAX_SCORE_ELEMENTS // per_row)
    parts = [
        _attend(
            query[r : r + step],
            key[r : r + step],
            value[r : r + step],
            prefix_key,
            prefix_value,
            scale,
            None if blocked is None else blocked[r : r + step],
        )
        for r in range(0, batch, step)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


# PyTorch's fused CPU attention kernel (blocked, online softmax: no score matrix in memory) that also returns
# each query's log-sum-exp, which is what joins two partial attentions exactly. Public SDPA returns no
# log-sum-exp, so this is the private op behind it; where a PyTorch build lacks it, the matmul path runs.
# For a 570-token few-shot prefix on 2 CPU cores it ran attention 2.2x faster than the matmul path.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend_flash(query, key, value, prefix_key, prefix_value, scale, blocked) -> torch.Tensor:
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    # Prefix part: every row's queries as one long sequence against the single shared copy (no mask: the
    # whole prefix is visible to every suffix token).
    rows_as_one = query.transpose(0, 1).reshape(1, heads, batch * length, dim)
    prefix_out, prefix_lse = _FLASH_CPU(
        rows_as_one,
        prefix_key.repeat_interleave(groups, dim=1),
        prefix_value.repeat_interleave(groups, dim=1),
        0.0,
        False,
        scale=scale,
    )[:2]
    prefix_out = prefix_out.view(heads, batch, length, dim).transpose(0, 1)  # [B, H, L, D]
    prefix_lse = prefix_lse.view(heads, batch, length).transpose(0, 1)  # [B, H, L]
    # Suffix part: each token over its own sequence's earlier tokens (every token sees itself, so no row is
    # fully masked).
    if blocked is None:
        blocked = torch.ones(length, length, dtype=torch.bool, device=query.device).triu_(1).expand(batch, -1, -1)
    bias = torch.zeros(blocked.shape, dtype=query.dtype, device=query.device).masked_fill_(blocked, float("-inf"))
    own_out, own_lse = _FLASH_CPU(
        query,
        key.repeat_interleave(groups, dim=1),
        value.repeat_interleave(groups, dim=1),
        0.0,
        False,
        attn_mask=bias[:, None],
        scale=scale,
    )[:2]
    # softmax over both parts = each part's softmax weighted by its share of the total exp-sum
    top = torch.maximum(prefix_lse, own_lse)
    prefix_share, own_share = (prefix_lse - top).exp_(), (own_lse - top).exp_()
    total = prefix_share + own_share
    out = prefix_out * (prefix_share / total)[..., None] + own_out * (own_share / total)[..., None]
    return out.to(query.dtype).transpose(1, 2)  # [B, L, H, D]


def _attend(query, key, value, prefix_key, prefix_value, scale, blocked) -> torch.Tensor:
    batch, heads, length, dim = query.shape
    kv_heads, prefix_len = prefix_key.shape[1], prefix_key.shape[2]
    groups = heads // kv_heads  # grouped-query attention: query head h reads key/value head h // groups
    # [KV, B, G*L, D]: each key/value head with all the query rows that read it, as one matrix
    q = query.unflatten(1, (kv_heads, groups)).transpose(0, 1).reshape(kv_heads, batch, groups * length, dim)
    q = q * scale
    # Prefix part: one product per key/value head against the single shared copy (no expand, no copy).
    prefix_scores = torch.matmul(q.reshape(kv_heads, -1, dim), prefix_key[0].transpose(1, 2))  # [KV, B*G*L, P]
    prefix_scores = prefix_scores.view(kv_heads, batch, groups * length, prefix_len).float()
    # Suffix part: each token attends to its own sequence's earlier tokens. Right padding comes after every
    # real token, so causality alone hides it; packed rows also hide the other sequences (`blocked`).
    own_scores = torch.matmul(q, key.transpose(0, 1).transpose(2, 3)).float()  # [KV, B, G*L, L]
    if blocked is None:
        blocked = torch.ones(length, length, dtype=torch.bool, device=query.device).triu_(1)
    own_scores.masked_fill_(torch.cat([blocked] * groups, dim=-2), float("-inf"))  # rows are (group, token)
    # One softmax over both parts: shift by the joint row maximum, exponentiate, normalise at the end.
    top = torch.maximum(prefix_scores.amax(-1, keepdim=True), own_scores.amax(-1, keepdim=True))
    prefix_weights = prefix_scores.sub_(top).exp_()
    own_weights = own_scores.sub_(top).exp_()
    total = prefix_weights.sum(-1, keepdim=True) + own_weights.sum(-1, keepdim=True)
    dtype = query.dtype
    out = torch.matmul(prefix_weights.to(dtype).view(kv_heads, -1, prefix_len), prefix_value[0])  # [KV, B*G*L, D]
    out = out.view(kv_heads, batch, groups * length, dim)
    out = out + torch.matmul(own_weights.to(dtype), value.transpose(0, 1))  # [KV, B, G*L, D]
    out = out / total.to(dtype)
    # back to [B, L, H, D], the layout transformers' attention functions return
    return out.view(kv_heads, batch, groups, length, dim).permute(1, 3, 0, 2, 4).reshape(batch, length, heads, dim)
