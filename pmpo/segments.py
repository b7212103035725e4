"""Segment masking analysis (the paper's step 2): split the prompt into at most 5 removable units and
measure dL_j = L(P without unit j) - L(P) for each. Positive dL: the unit helps; negative: it hurts or
is redundant. The table of dL_j is shown to the rewriter as a hint.

Units come either from a deterministic splitter (`split_units`, the robust default for small models) or
from the model marking them with `<mask>...</mask>` as in the paper (`model_units`, which falls back to
the splitter when the reply is unusable).

Separator convention: units are plain texts without their separator. A prompt with two or more non-empty
lines is split by lines and rejoined with "\\n"; a one-line prompt is split by sentences and rejoined with
" ". `unit_separator(prompt)` tells which, `segment(prompt)` returns both at once, and `join_units` /
`without_unit` / `masking_analysis` take the separator (default " ").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from pmpo.generation import sample
from pmpo.models import LoadedModel
from pmpo.prompting import chat_request
from pmpo.result import SegmentEffect

MAX_UNITS = 5  # the paper splits prompts into at most 5 units

# Words that end in a period but rarely end a sentence. Hand-written because no sentence splitter is a
# dependency and NLTK's punkt needs a data download (impossible offline); prompts are short English
# instructions, for which these rules are enough.
# "etc." and "No." are left out on purpose: they often do end a sentence ("Answer Yes or No. Then ...").
_ABBREVIATIONS = frozenset("e.g i.e cf vs al approx mr mrs ms dr prof jr sr fig eq resp incl".split())
# A sentence ends at . ! or ? (plus closing quotes/brackets), then whitespace, then something that is not
# lowercase. Decimals ("3.5") never match because no whitespace follows the period.
_SENTENCE_END = re.compile(r"""[.!?]+["')\]]*\s+(?=[^\sa-z])""")
_MASK = re.compile(r"<mask>(.*?)</mask>", re.IGNORECASE | re.DOTALL)
# Marked units must cover this share of the prompt's non-space characters; less means the model
# paraphrased or dropped parts, and its units would not describe the prompt.
_MIN_COVERAGE = 0.6


@dataclass(frozen=True)
class Units:
    """A prompt's units and the separator that rejoins them."""

    texts: tuple[str, ...]
    separator: str

    def join(self) -> str:
        """The prompt rebuilt from all units."""
        return join_units(list(self.texts), self.separator)

    def without(self, index: int) -> str:
        """The prompt with unit `index` removed."""
        return without_unit(list(self.texts), index, self.separator)


def unit_separator(prompt: str) -> str:
    """The separator `split_units` uses for `prompt`: newline for multi-line prompts, else a space."""
    return "\n" if len(_lines(prompt)) >= 2 else " "


def segment(prompt: str, max_units: int = MAX_UNITS) -> Units:
    """`split_units` together with the separator that rejoins the units."""
    return Units(tuple(split_units(prompt, max_units)), unit_separator(prompt))


def split_units(prompt: str, max_units: int = MAX_UNITS) -> list[str]:
    """Split into at most `max_units` removable units: by non-empty lines if >= 2, else by sentences."""
    lines = _lines(prompt)
    pieces = lines if len(lines) >= 2 else split_sentences(prompt)
    return _merge(pieces, max_units, unit_separator(prompt))


def split_sentences(text: str) -> list[str]:
    """Sentences of one paragraph; abbreviations such as "e.g." and decimals such as "3.5" stay whole."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        words = text[start : match.start() + 1].split()
        if words and words[-1].rstrip(".").lower() in _ABBREVIATIONS:  # "e.g. Paris", "Dr. Smith"
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def join_units(units: list[str], separator: str = " ") -> str:
    """Rebuild a prompt from its units."""
    return separator.join(u.strip() for u in units if u.strip())


def without_unit(units: list[str], index: int, separator: str = " ") -> str:
    """The prompt with unit `index` removed (the empty string when it was the only unit)."""
    return join_units(units[:index] + units[index + 1 :], separator)


def parse_marked_units(reply: str, prompt: str, max_units: int = MAX_UNITS) -> list[str] | None:
    """Units the model marked with <mask>...</mask>, as the prompt's own text; None when unusable."""
    marked = [m.strip() for m in _MASK.findall(reply)]
    marked = [m for m in marked if m]
    if not marked or len(marked) > max_units:
        return None
    starts, position, covered = [], 0, 0
    for unit in marked:
        # Whitespace and case may differ from the prompt; the words must not.
        pattern = r"\s+".join(re.escape(word) for word in unit.split())
        found = re.compile(pattern, re.IGNORECASE).search(prompt, position)
        if found is None:
            return None
        starts.append(found.start())
        position = found.end()
        covered += len("".join(unit.split()))
    if covered < _MIN_COVERAGE * len("".join(prompt.split())):
        return None
    # Cut the prompt itself at the marked starts, so unmarked text (e.g. between units) stays in the
    # preceding unit and the units rejoin to the whole prompt.
    bounds = [0, *starts[1:], len(prompt)]
    units = [prompt[a:b].strip() for a, b in zip(bounds, bounds[1:])]
    return [u for u in units if u]


MARK_REQUEST = (
    "Copy the instruction below word for word, but wrap each part that could be removed on its own in "
    "<mask> and </mask>. Use at most {max_units} parts and change no words.\n\n"
    "Instruction:\n{prompt}"
)


def model_units(lm: LoadedModel, prompt: str, *, seed: int, max_units: int = MAX_UNITS) -> list[str]:
    """Units the model marks with <mask> tags (the paper's way); the splitter's units when unusable.

    SmolLM2-135M-Instruct copies the prompt but does not add the tags (checked with chat and few-shot
    forms), so with it this always falls back; capable models can mark units as the paper does.
    """
    message = MARK_REQUEST.format(max_units=max_units, prompt=prompt)
    budget = 2 * len(lm.tokenizer.encode(prompt, add_special_tokens=False)) + 8 * max_units + 16
    # Low temperature: the reply should copy the prompt, so near-greedy; the seed keeps it reproducible.
    request = chat_request(lm.tokenizer, message)
    reply = sample(lm, request, 1, seed=seed, max_new_tokens=budget, temperature=0.3)[0]
    return parse_marked_units(reply, prompt, max_units) or split_units(prompt, max_units)


def masking_analysis(
    loss_of: Callable[[list[str]], Sequence[float]],
    prompt_loss: float,
    units: list[str],
    separator: str = " ",
) -> tuple[SegmentEffect, ...]:
    """dL_j = L(prompt without unit j) - L(prompt) for every unit, from one batched `loss_of` call."""
    if not units:
        return ()
    ablated = [without_unit(units, j, separator) for j in range(len(units))]
    losses = list(loss_of(ablated))
    if len(losses) != len(ablated):
        raise ValueError(f"loss_of returned {len(losses)} losses for {len(ablated)} prompts")
    return tuple(SegmentEffect(j, units[j], float(losses[j]) - float(prompt_loss)) for j in range(len(units)))


def verdict(delta_loss: float) -> str:
    """How a unit's dL reads: removing it raises the loss (helps), lowers it (hurts), or neither."""
    if delta_loss > 0:
        return "helps"
    return "hurts" if delta_loss < 0 else "neutral"


def masking_table(effects: Sequence[SegmentEffect], width: int = 70) -> str:
    """A compact text table of dL per unit for the rewrite request."""
    if not effects:
        return "(no units were measured)"
    rows = ["unit | dL | verdict | text"]
    for e in effects:
        text = " ".join(e.text.split())
        text = text if len(text) <= width else text[: width - 3] + "..."
        rows.append(f"{e.index + 1} | {e.delta_loss:+.2f} | {verdict(e.delta_loss)} | {text}")
    return "\n".join(rows)


def _lines(prompt: str) -> list[str]:
    return [line.strip() for line in prompt.splitlines() if line.strip()]


def _merge(pieces: list[str], max_units: int, separator: str) -> list[str]:
    """Merge adjacent pieces until at most `max_units` remain, always the shortest adjacent pair (leftmost
    on ties), so units end up balanced by length and the result is deterministic."""
    pieces = list(pieces)
    while len(pieces) > max(max_units, 1):
        sizes = [len(a) + len(b) for a, b in zip(pieces, pieces[1:])]
        i = sizes.index(min(sizes))
        pieces[i : i + 2] = [pieces[i] + separator + pieces[i + 1]]
    return pieces
