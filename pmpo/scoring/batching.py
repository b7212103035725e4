"""How the scorer lays sequences out in forward passes: rows within a token budget, short sequences packed.

Every sequence is an example's input followed by its reference output, all under one prompt. A row holds
one sequence, or, when the scorer attends to a shared prefix (`pmpo.scoring.prefix_attention`), several short ones
packed end to end; a mask then keeps each sequence to its own tokens. Sorting alone leaves 10-45% padding on
the BIG-bench samples (their lengths vary 3x within a task); packing leaves almost none.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    """One forward pass, with where its target tokens are predicted."""

    seqs: list[int]  # indices of the sequences it holds
    ids: torch.Tensor  # [R, W] token ids, right-padded
    positions: torch.Tensor  # [R, W] position of each token, counting from the end of the shared prefix
    blocked: torch.Tensor | None  # [R, W, W] True where a token may not see another (packed rows only)
    rows: torch.Tensor  # [T] the row of each target token's prediction
    cols: torch.Tensor  # [T] the column whose output predicts it
    targets: torch.Tensor  # [T] the target token ids
    owner: torch.Tensor  # [T] position in `seqs` of the sequence each target token belongs to


def plan(seqs: list[list[int]], starts: list[int], budget: int, *, pack: bool, offset: int, pad_id: int) -> list[Batch]:
    """Batches covering every sequence (input + target, target from `starts[i]`) within `budget` tokens."""
    # The last token predicts nothing that is scored, so it is never fed.
    fed = [len(s) - 1 for s in seqs]
    rows = _pack(fed) if pack else [[i] for i in range(len(seqs))]
    row_len = [sum(fed[i] for i in row) for row in rows]
    order = sorted(range(len(rows)), key=lambda r: -row_len[r])
    return [
        _batch([rows[r] for r in group], seqs, starts, offset=offset, pad_id=pad_id, masked=pack)
        for group in batches(order, row_len, budget)
    ]


def padded_sizes(fed: list[int], budget: int, *, pack: bool) -> list[int]:
    """Tokens (rows x widest row, padding included) of each forward pass `plan` makes for sequences that feed
    `fed` tokens each: what a cost plan counts without building a batch."""
    rows = _pack(fed) if pack else [[i] for i in range(len(fed))]
    row_len = [sum(fed[i] for i in row) for row in rows]
    order = sorted(range(len(rows)), key=lambda r: -row_len[r])
    return [len(group) * row_len[group[0]] for group in batches(order, row_len, budget)]


def batches(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Group indices (sorted longest first) so that rows x longest row stays within `budget` tokens."""
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _pack(lengths: list[int]) -> list[list[int]]:
    """First-fit decreasing into rows about twice the median length; longer sequences get a row each."""
    # Rows much wider than a typical sequence would make every token attend over (masked) width for
    # nothing; twice the median keeps that small while most rows fill up.
    capacity = max(32, 2 * int(statistics.median(lengths)))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if fit is None:
            rows.append([i])
            free.append(capacity - lengths[i])
        else:
            rows[fit].append(i)
            free[fit] -= lengths[i]
    return rows


def _batch(rows: list[list[int]], seqs, starts, *, offset: int, pad_id: int, masked: bool) -> Batch:
    width = max(sum(len(seqs[i]) - 1 for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # which sequence a column holds; -1 = pad
    members, pred_rows, pred_cols, targets, owner = [], [], [], [], []
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = len(seqs[i]) - 1
            ids[r, at : at + n] = torch.tensor(seqs[i][:-1])
            positions[r, at : at + n] = torch.arange(offset, offset + n)
            segment[r, at : at + n] = len(members)
            # Column t predicts token t + 1: the targets seqs[i][start:] come from columns start-1 .. n-1.
            count = len(seqs[i]) - starts[i]
            pred_rows += [r] * count
            pred_cols += range(at + starts[i] - 1, at + n)
            targets += seqs[i][starts[i] :]
            owner += [len(members)] * count
            members.append(i)
            at += n
        positions[r, at:] = torch.arange(offset + at, offset + width)  # pads: any position will do
    blocked = None
    if masked:
        future = torch.ones(width, width, dtype=torch.bool).triu_(1)
        blocked = (segment[:, :, None] != segment[:, None, :]) | future  # [R, W, W]
    return Batch(
        seqs=members,
        ids=ids,
        positions=positions,
        blocked=blocked,
        rows=torch.tensor(pred_rows),
        cols=torch.tensor(pred_cols),
        targets=torch.tensor(targets),
        owner=torch.tensor(owner),
    )
