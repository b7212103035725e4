"""How the scorer lays sequences out in forward passes: rows within a token budget, short sequences packed.

Every sequence is an example's input followed by its reference output, all under one prompt. A row holds
one sequence, or, when the scorer attends to a shared prefix (`pmpo.scoring.prefix_attention`), several short ones
packed end to end; a mask then keeps each sequence to its own tokens. Sorting alone leaves 10-45% padding on
the BIG-bench samples (their lengths vary 3x within a task); packing leaves almost none.

Packed rows also feed an input once for all its completions (a multiple-choice example's answer and distractors,
a preference example's chosen and rejected outputs): the input's tokens come first, then each completion, which
sees the input and itself but no sibling. Each option used to carry its own copy of the input, so on BIG-bench's
multiple choice (3-7 options after a 50-200 token question) most of the tokens scored were the same question again.
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


def plan(
    seqs: list[list[int]], starts: list[int], budget: int, *, pack: bool, offset: int, pad_id: int, share: bool = True
) -> list[Batch]:
    """Batches covering every sequence (input + target, target from `starts[i]`) within `budget` tokens; packed
    rows (`pack`) feed the tokens before a target once for all sequences that begin with them (`share`)."""
    units = _units(seqs, starts, share=pack and share)
    rows, groups = _rows([u.fed for u in units], budget, pack=pack)
    return [
        _batch([[units[u] for u in rows[r]] for r in group], seqs, starts, offset=offset, pad_id=pad_id, masked=pack)
        for group in groups
    ]


def padded_sizes(seqs: list[list[int]], starts: list[int], budget: int, *, pack: bool, share: bool = True) -> list[int]:
    """Tokens (rows x widest row, padding included) of each forward pass `plan` makes for these sequences: what a
    cost plan counts without building a batch."""
    fed = [u.fed for u in _units(seqs, starts, share=pack and share)]
    rows, groups = _rows(fed, budget, pack=pack)
    return [len(group) * sum(fed[u] for u in rows[group[0]]) for group in groups]


def _rows(fed: list[int], budget: int, *, pack: bool) -> tuple[list[list[int]], list[list[int]]]:
    """The units of each row (packed or one a row), and the rows of each forward pass, longest first."""
    rows = _pack(fed) if pack else [[u] for u in range(len(fed))]
    row_len = [sum(fed[u] for u in row) for row in rows]
    order = sorted(range(len(rows)), key=lambda r: -row_len[r])
    return rows, batches(order, row_len, budget)


def batches(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Group indices (sorted longest first) so that rows x longest row stays within `budget` tokens."""
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@dataclass(frozen=True)
class _Unit:
    """Sequences fed together: the tokens before their targets once, then each one's own tokens after them."""

    members: list[int]
    common: int  # leading tokens fed once: every member's tokens before its first target
    fed: int  # tokens the unit puts in a row


def _units(seqs: list[list[int]], starts: list[int], *, share: bool) -> list[_Unit]:
    """Each sequence alone, or (`share`) sequences with the same tokens before their targets as one unit."""
    # Grouped by every token before the target, not by the input's text: where a completion's first token merged
    # into the input's last one the contexts differ, and those sequences simply keep their own copy.
    families: dict[object, list[int]] = {}
    for i, (s, start) in enumerate(zip(seqs, starts)):
        families.setdefault(tuple(s[:start]) if share else i, []).append(i)
    # The column before `common` predicts every member's first target token; a member's last token predicts
    # nothing that is scored, so it is never fed.
    return [
        _Unit(members, starts[members[0]], starts[members[0]] + sum(len(seqs[i]) - 1 - starts[i] for i in members))
        for members in families.values()
    ]


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


def _batch(rows: list[list[_Unit]], seqs, starts, *, offset: int, pad_id: int, masked: bool) -> Batch:
    width = max(sum(u.fed for u in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # which unit a column holds; -1 = pad
    branch = torch.full((len(rows), width), -1, dtype=torch.long)  # which member's own tokens; -1 = shared
    members, pred_rows, pred_cols, targets, owner = [], [], [], [], []
    for r, row in enumerate(rows):
        at = 0
        for u, unit in enumerate(row):
            first, c = unit.members[0], unit.common
            ids[r, at : at + c] = torch.tensor(seqs[first][:c])
            positions[r, at : at + c] = torch.arange(offset, offset + c)
            segment[r, at : at + c] = u
            tail_at = at + c
            for i in unit.members:
                tail = seqs[i][c:-1]
                ids[r, tail_at : tail_at + len(tail)] = torch.tensor(tail, dtype=torch.long)
                positions[r, tail_at : tail_at + len(tail)] = torch.arange(offset + c, offset + c + len(tail))
                segment[r, tail_at : tail_at + len(tail)] = u
                branch[r, tail_at : tail_at + len(tail)] = len(members)
                # Token j is predicted by the column holding token j - 1: shared, or in this member's own tail.
                predictors = range(starts[i] - 1, len(seqs[i]) - 1)
                pred_cols += [at + j if j < c else tail_at + j - c for j in predictors]
                pred_rows += [r] * len(predictors)
                targets += seqs[i][starts[i] :]
                owner += [len(members)] * len(predictors)
                members.append(i)
                tail_at += len(tail)
            at = tail_at
        positions[r, at:] = torch.arange(offset + at, offset + width)  # pads: any position will do
    blocked = None
    if masked:
        future = torch.ones(width, width, dtype=torch.bool).triu_(1)
        other_unit = segment[:, :, None] != segment[:, None, :]
        sibling = (branch[:, None, :] >= 0) & (branch[:, :, None] != branch[:, None, :])  # another member's own tokens
        blocked = other_unit | sibling | future  # [R, W, W]
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
