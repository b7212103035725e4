"""From raw rows (dicts read from any source) to examples: column mapping, kind inference, row checks."""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Literal, Sequence

from pmpo.data.examples import Example, MultipleChoice, Preference, Supervised
from pmpo.errors import DataError
from pmpo.text.template import INPUT, VARIABLE, Fields

log = logging.getLogger(__name__)

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
    # Template variable -> the column that fills it (`--column review=text`); a variable not named here is
    # filled from the column of its own name.
    variables: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_pairs(cls, pairs: Iterable[str]) -> "ColumnMap":
        """Parse CLI-style `NAME=COLUMN` pairs, e.g. ["target=answer", "review=text"]: NAME is one of our
        fields or a template variable."""
        mapping: dict[str, str] = {}
        for pair in pairs:
            name, sep, column = (part.strip() for part in pair.partition("="))
            if not sep or not column or not name:
                raise DataError(
                    f"--column {pair!r}: expected FIELD=COLUMN with FIELD one of {', '.join(ROLES)} or a variable"
                )
            mapping[name] = column
        try:
            return cls.from_mapping(mapping)
        except DataError as exc:
            raise DataError(f"--column: {exc}") from None

    @classmethod
    def from_mapping(cls, mapping: dict[str, str]) -> "ColumnMap":
        """Our fields and template variables -> columns, as a config's `data.columns` gives them."""
        bad = [name for name in mapping if name not in ROLES and not _is_variable_name(name)]
        if bad:
            raise DataError(
                f"{', '.join(repr(f'{n}={mapping[n]}') for n in bad)}: not one of our fields ({', '.join(ROLES)}) "
                "nor a template variable name (letters, digits, _)"
            )
        roles = {name: column for name, column in mapping.items() if name in ROLES and name != INPUT}
        variables = tuple((name, column) for name, column in mapping.items() if name not in ROLES)
        return cls(**roles, input=mapping.get(INPUT, INPUT), variables=variables)


ROLES = ("input", "target", "chosen", "rejected", "options", "aliases")  # our fields, as `--column` names them


def _is_variable_name(name: str) -> bool:
    return VARIABLE.fullmatch("{{" + name + "}}") is not None


def to_examples(
    rows: list[dict[str, Any]],
    columns: ColumnMap,
    kind: Kind,
    origin: str,
    text_lists: bool = False,
    variables: Sequence[str] = (),
) -> list[Example]:
    """Turn rows into examples of one kind; errors name `origin`, the row and the column.

    `text_lists`: the source has no list type (CSV), so a list field's cell may hold a JSON list.
    `variables`: the prompt's template variables; each is filled from a column (its own name, or the one
    `columns.variables` maps to it), and the examples carry those fields. Then the `input` column is optional.
    """
    rows = [_from_target_scores(row, columns) for row in rows]
    # A key that is null in every row is absent: JSON-lines readers fill missing keys with None.
    present = [c for c in dict.fromkeys(k for row in rows for k in row) if any(r.get(c) is not None for r in rows)]
    resolved = _resolve_kind(kind, present, columns)
    if variables:  # the prompt is known: a mapped name it does not use is a typo, not a variable
        for name, column in columns.variables:
            if name not in variables:
                raise unknown_mapping(origin, name, column, variables)
    sources = field_columns(columns, variables)
    for name, column in sources.items():
        if column not in present:
            raise missing_variable(origin, name, column, present)
    for field_name in _REQUIRED[resolved]:
        if field_name == INPUT and sources:
            continue  # the fields are the input
        if getattr(columns, field_name) not in present:
            raise _missing_column(origin, resolved, field_name, columns, present)
    if sources:
        _warn_unused(origin, present, columns, sources)
    build = _BUILDERS[resolved]
    return [
        build(_Cells(row, columns, f"{origin}, row {i}", text_lists, sources)) for i, row in enumerate(rows, start=1)
    ]


def field_columns(columns: ColumnMap, variables: Sequence[str]) -> dict[str, str]:
    """Each field an example carries -> the column it comes from: the prompt's variables when they are known
    (a mapped name the prompt does not use is left out, and its column warned about as unused), else every mapped one."""
    mapped = dict(columns.variables)
    names = list(variables) if variables else list(mapped)
    return {name: mapped.get(name, columns.input if name == INPUT else name) for name in names}


def missing_variable(origin: str, name: str, column: str, present: list[str]) -> DataError:
    """The error for a variable whose column the source lacks: names the variable, the column and the way out."""
    return DataError(
        f"{origin}: the prompt's variable {{{{{name}}}}} has no field: no column {column!r}. "
        f"Columns found: {', '.join(present) or 'none'}. Map the one that fills it with --column {name}=<column>"
    )


def unknown_mapping(origin: str, name: str, column: str, variables: Sequence[str]) -> DataError:
    """The error for a column mapping whose name is neither our field nor the prompt's variable: names the close one."""
    close = difflib.get_close_matches(name, [*ROLES, *variables], n=1)
    hint = f"; did you mean {close[0]}={column}?" if close else ""
    of_prompt = f"the prompt's variables ({', '.join(variables)})" if variables else "a variable of the prompt"
    return DataError(
        f"{origin}: column mapping {name}={column}: {name!r} is neither one of our fields ({', '.join(ROLES)}) "
        f"nor {of_prompt}{hint}"
    )


def _warn_unused(origin: str, present: list[str], columns: ColumnMap, sources: dict[str, str]) -> None:
    """One warning for the columns neither a field of ours nor any variable reads (they are ignored)."""
    used = {getattr(columns, f) for f in ROLES} | set(sources.values()) | {BIGBENCH_SCORES}
    unused = [c for c in present if c not in used]
    if unused:
        log.warning("%s: column(s) %s fill no variable of the prompt; ignored", origin, ", ".join(map(repr, unused)))


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
    for name, column in columns.variables:  # `targte=label`: the mapping meant for this field, misspelt
        if difflib.get_close_matches(name, [field_name], n=1):
            return unknown_mapping(origin, name, column, ())
    mapped = {getattr(columns, f.name) for f in fields(columns) if f.name != "variables"}
    mapped |= {column for _, column in columns.variables}
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
    sources: dict[str, str]  # field -> column, for a prompt with variables; empty: one input text

    def fields(self) -> tuple[tuple[str, str], ...]:
        """The example's named input fields (empty when the prompt has no variables)."""
        return tuple((name, self._cell(name, column)) for name, column in self.sources.items())

    def input(self) -> str:
        """The input text: the input column, or the fields as `name: value` lines when there is none."""
        if not self.sources or self.row.get(self.columns.input) is not None:
            return self.text("input")
        return Fields(self.fields()).text

    def _cell(self, name: str, column: str) -> str:
        value = self.row.get(column)
        if isinstance(value, (dict, list, tuple)):
            raise DataError(
                f"{self.where}: the variable {{{{{name}}}}} (column {column!r}) must be text, not {value!r}"
            )
        if value is None or not str(value).strip():
            raise DataError(f"{self.where}: the variable {{{{{name}}}}} (column {column!r}) is empty")
        return str(value)

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
    return Supervised(input=cells.input(), target=target, aliases=aliases, fields=cells.fields())


def _preference(cells: _Cells) -> Preference:
    rejected = cells.texts("rejected")
    if not rejected:
        raise DataError(f"{cells.where}: the rejected output (column {cells.columns.rejected!r}) is empty")
    return Preference(input=cells.input(), chosen=cells.text("chosen"), rejected=rejected, fields=cells.fields())


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
    return MultipleChoice(input=cells.input(), options=options, target=target, aliases=aliases, fields=cells.fields())


_BUILDERS: dict[str, Callable[[_Cells], Example]] = {
    "supervised": _supervised,
    "preference": _preference,
    "multiple_choice": _multiple_choice,
}
