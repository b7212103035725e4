"""From raw rows (dicts read from any source) to examples: column mapping, kind inference, row checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Literal

from pmpo.data.examples import Example, MultipleChoice, Preference, Supervised
from pmpo.errors import DataError

Kind = Literal["auto", "supervised", "preference", "multiple_choice"]

# The columns each kind of example needs, by our field names.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "supervised": ("input", "target"),
    "preference": ("input", "chosen", "rejected"),
    "multiple_choice": ("input", "options", "target"),
}
# BIG-bench marks multiple-choice rows with {option: score}; the best-scored option is the answer.
BIGBENCH_SCORES = "target_scores"


@dataclass(frozen=True)
class ColumnMap:
    """Which of the user's columns holds each of our fields; by default a field's own name."""

    input: str = "input"
    target: str = "target"
    chosen: str = "chosen"
    rejected: str = "rejected"
    options: str = "options"
    aliases: str = "aliases"

    @classmethod
    def from_pairs(cls, pairs: Iterable[str]) -> "ColumnMap":
        """Parse CLI-style `FIELD=COLUMN` pairs, e.g. ["target=answer", "input=question"]."""
        known = [f.name for f in fields(cls)]
        mapping: dict[str, str] = {}
        for pair in pairs:
            field_name, sep, column = (part.strip() for part in pair.partition("="))
            if not sep or not column or field_name not in known:
                raise DataError(f"--column {pair!r}: expected FIELD=COLUMN with FIELD one of {', '.join(known)}")
            mapping[field_name] = column
        return cls(**mapping)


def to_examples(
    rows: list[dict[str, Any]], columns: ColumnMap, kind: Kind, origin: str, text_lists: bool = False
) -> list[Example]:
    """Turn rows into examples of one kind; errors name `origin`, the row and the column.

    `text_lists`: the source has no list type (CSV), so a list field's cell may hold a JSON list.
    """
    rows = [_from_target_scores(row, columns) for row in rows]
    # A key that is null in every row is absent: JSON-lines readers fill missing keys with None.
    present = [c for c in dict.fromkeys(k for row in rows for k in row) if any(r.get(c) is not None for r in rows)]
    resolved = _resolve_kind(kind, present, columns)
    for field_name in _REQUIRED[resolved]:
        if getattr(columns, field_name) not in present:
            raise _missing_column(origin, resolved, field_name, columns, present)
    build = _BUILDERS[resolved]
    return [build(_Cells(row, columns, f"{origin}, row {i}", text_lists)) for i, row in enumerate(rows, start=1)]


def _resolve_kind(kind: str, present: list[str], columns: ColumnMap) -> str:
    if kind == "auto":
        if columns.options in present:
            return "multiple_choice"
        if columns.chosen in present and columns.rejected in present:
            return "preference"
        return "supervised"
    if kind not in _REQUIRED:
        raise DataError(f"kind must be auto, {', '.join(_REQUIRED)}; not {kind!r}")
    return kind


def _missing_column(origin: str, kind: str, field_name: str, columns: ColumnMap, present: list[str]) -> DataError:
    mapped = {getattr(columns, f.name) for f in fields(columns)}
    unmapped = [c for c in present if c not in mapped]
    example = unmapped[0] if unmapped else "<column>"
    return DataError(
        f"{origin}: no column {getattr(columns, field_name)!r}, which holds the {field_name} of "
        f"{kind.replace('_', ' ')} examples. Columns found: {', '.join(present) or 'none'}. "
        f"Map the one that holds the {field_name} with --column {field_name}=<column> "
        f"(e.g. --column {field_name}={example}; in Python: ColumnMap({field_name}=...))."
    )


def _from_target_scores(row: dict[str, Any], columns: ColumnMap) -> dict[str, Any]:
    """A BIG-bench row with target_scores becomes options + target (+ aliases for other full-score options)."""
    scores = row.get(BIGBENCH_SCORES)
    if not isinstance(scores, dict) or row.get(columns.options) is not None:
        return row
    # Readers that merge rows into one schema (datasets) give other rows' options a None score.
    scores = {option: score for option, score in scores.items() if score is not None}
    if not scores:
        return row
    best = max(scores.values())
    correct = [option for option, score in scores.items() if score == best]
    return {**row, columns.options: list(scores), columns.target: correct[0], columns.aliases: correct[1:]}


@dataclass(frozen=True)
class _Cells:
    """One row, read through the column map; errors say where (`file, row N`) and which column."""

    row: dict[str, Any]
    columns: ColumnMap
    where: str
    text_lists: bool

    def text(self, field_name: str) -> str:
        """The field as non-empty text (numbers and booleans are written as text)."""
        column = getattr(self.columns, field_name)
        value = self.row.get(column)
        if isinstance(value, (dict, list, tuple)):
            raise DataError(f"{self.where}: the {field_name} (column {column!r}) must be text, not {value!r}")
        if value is None or not str(value).strip():
            raise DataError(f"{self.where}: the {field_name} (column {column!r}) is empty")
        return str(value)

    def texts(self, field_name: str) -> tuple[str, ...]:
        """The field as a tuple of non-empty texts: a list, or one text (a JSON list in CSV cells)."""
        value = self.row.get(getattr(self.columns, field_name))
        if isinstance(value, str) and self.text_lists and value.lstrip().startswith("["):
            value = _json_list(value)
        if value is None:
            return ()
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(dict.fromkeys(str(v) for v in items if v is not None and str(v).strip()))

    def target_and_aliases(self) -> tuple[str, tuple[str, ...]]:
        """The target and its other accepted answers; a list target (BIG-bench) is target + aliases."""
        if isinstance(self.row.get(self.columns.target), (list, tuple)):
            targets = self.texts("target")
            if not targets:
                raise DataError(f"{self.where}: the target (column {self.columns.target!r}) is empty")
            target, extra = targets[0], targets[1:]
        else:
            target, extra = self.text("target"), ()
        aliases = tuple(a for a in dict.fromkeys(extra + self.texts("aliases")) if a != target)
        return target, aliases


def _json_list(value: str) -> Any:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return value
    return parsed if isinstance(parsed, list) else value


def _supervised(cells: _Cells) -> Supervised:
    target, aliases = cells.target_and_aliases()
    return Supervised(input=cells.text("input"), target=target, aliases=aliases)


def _preference(cells: _Cells) -> Preference:
    rejected = cells.texts("rejected")
    if not rejected:
        raise DataError(f"{cells.where}: the rejected output (column {cells.columns.rejected!r}) is empty")
    return Preference(input=cells.text("input"), chosen=cells.text("chosen"), rejected=rejected)


def _multiple_choice(cells: _Cells) -> MultipleChoice:
    options = cells.texts("options")
    if len(options) < 2:
        raise DataError(
            f"{cells.where}: needs at least two options (column {cells.columns.options!r}), got {list(options)}"
            + ('; in a CSV cell write them as a JSON list, e.g. ["yes", "no"]' if cells.text_lists else "")
        )
    target, aliases = cells.target_and_aliases()
    if target not in options:
        raise DataError(f"{cells.where}: the target {target!r} is not one of the options {list(options)}")
    return MultipleChoice(input=cells.text("input"), options=options, target=target, aliases=aliases)


_BUILDERS: dict[str, Callable[[_Cells], Example]] = {
    "supervised": _supervised,
    "preference": _preference,
    "multiple_choice": _multiple_choice,
}
