"""The prompt's removable units (the paper's step 2 splits the prompt into at most 5; `pmpo.masking.analysis`
measures the loss change when each is masked out).

Units come either from a deterministic splitter (`segment`, the robust default for small models) or
from the model marking them with `<mask>...</mask>` as in the paper (`model_units`, which falls back to
the splitter when the reply is unusable).

Units are character spans of the prompt's own text (`Units`). "P without unit j" is the prompt with that
span and one adjoining separator cut out, every other character (blank lines, indentation) kept, and
removing nothing gives the prompt back byte for byte. So L(P) and every L(P without unit j) come from the
same rendering and dL measures the unit's content, not a whitespace change shared by every ablation.
A prompt with two or more non-empty lines is split by lines, a one-line prompt by sentences; a demonstration
(`pmpo.text.demonstrations`) is never split, so a removal drops a whole example, never its input or answer alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection, Sequence

from pmpo.models.generation import sample
from pmpo.models.loading import LoadedModel
from pmpo.rewriting.backends import Rewriter, as_rewriter, local_model
from pmpo.text.demonstrations import blocks
from pmpo.text.rendering import chat_request
from pmpo.text.template import with_editable

MAX_UNITS = 5  # the paper splits prompts into at most 5 units

# Words that end in a period but rarely end a sentence. Hand-written because no sentence splitter is a
# dependency and NLTK's punkt needs a data download (impossible offline); prompts are short English
# instructions, for which these rules are enough.
# "etc." and "No." are left out on purpose: they often do end a sentence ("Answer Yes or No. Then ...").
_ABBREVIATIONS = frozenset("e.g i.e cf vs al approx mr mrs ms dr prof jr sr fig eq resp incl".split())
# A sentence ends at . ! or ? (plus closing quotes/brackets), then whitespace, then something that is not
# lowercase. Decimals ("3.5") never match because no whitespace follows the period.
_SENTENCE_END = re.compile(r"""[.!?]+["')\]]*\s+(?=[^\sa-z])""")
_LINE = re.compile(r"[^\r\n]+")
_MASK = re.compile(r"<mask>(.*?)</mask>", re.IGNORECASE | re.DOTALL)
# Marked units must cover this share of the prompt's non-space characters; less means the model
# paraphrased or dropped parts, and its units would not describe the prompt.
_MIN_COVERAGE = 0.6

Span = tuple[int, int]  # [start, end) character offsets into the prompt


@dataclass(frozen=True)
class Units:
    """A prompt and its removable units, as character spans of the prompt's own text (in order)."""

    prompt: str
    spans: tuple[Span, ...]
    # The chat prompt whose optimised message `prompt` is (pmpo.text.template.editable); "" when `prompt` is the
    # whole prompt. Scoring an ablation needs the whole prompt back.
    frame: str = ""
    message: int | None = None  # which message of `frame` `prompt` is (None: its system message)

    def whole(self, text: str) -> str:
        """The whole prompt with `text` (e.g. an ablation of `prompt`) as its optimised part."""
        return with_editable(self.frame, text, self.message) if self.frame else text

    @property
    def texts(self) -> tuple[str, ...]:
        """Each unit's text, exactly as it stands in the prompt."""
        return tuple(self.prompt[a:b] for a, b in self.spans)

    def without(self, index: int) -> str:
        """The prompt with unit `index` removed (the empty string when it was the only unit)."""
        return self.remove((index,))

    def remove(self, indices: Collection[int]) -> str:
        """The prompt without the units at `indices`; every other character stays as it was.

        Between two kept units goes the strongest separator the prompt had anywhere between them (most
        line breaks, then longest), so removing a paragraph's last line keeps the paragraph break.
        """
        drop = set(indices)
        kept = [j for j in range(len(self.spans)) if j not in drop]
        if not self.spans:
            return self.prompt
        if not kept:
            return ""
        gaps = [self.prompt[a[1] : b[0]] for a, b in zip(self.spans, self.spans[1:])]
        parts = [self.prompt[: self.spans[0][0]]]  # leading whitespace of the prompt
        for previous, j in zip([None, *kept], kept):
            if previous is not None:
                parts.append(max(gaps[previous:j], key=lambda g: (g.count("\n"), len(g))))
            parts.append(self.prompt[slice(*self.spans[j])])
        parts.append(self.prompt[self.spans[-1][1] :])  # trailing whitespace
        return "".join(parts)


def locate(prompt: str, texts: Sequence[str]) -> Units:
    """The spans of unit texts cut from `prompt` (as `Units.texts` gives them), found in order."""
    spans, position = [], 0
    for text in texts:
        start = prompt.find(text, position)
        if start < 0 or not text:
            raise ValueError(f"unit {text[:40]!r} is not a piece of the prompt after offset {position}")
        spans.append((start, start + len(text)))
        position = start + len(text)
    return Units(prompt, tuple(spans))


def segment(prompt: str, max_units: int = MAX_UNITS) -> Units:
    """Split into at most `max_units` removable units: by non-empty lines if >= 2, else by sentences."""
    lines = _line_spans(prompt)
    pieces = _whole(lines, blocks(prompt)) if len(lines) >= 2 else _sentence_spans(prompt)
    return Units(prompt, tuple(_merge(pieces, max_units)))


def marked_units(reply: str, prompt: str, max_units: int = MAX_UNITS) -> Units | None:
    """The model's <mask>...</mask> units as spans of the prompt; None when unusable."""
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
    # preceding unit and the units cover the whole prompt.
    bounds = [0, *starts[1:], len(prompt)]
    spans = [_stripped(prompt, a, b) for a, b in zip(bounds, bounds[1:])]
    return Units(prompt, tuple(s for s in spans if s[0] < s[1]))


MARK_REQUEST = (
    "Copy the instruction below word for word, but wrap each part that could be removed on its own in "
    "<mask> and </mask>. Use at most {max_units} parts and change no words.\n\n"
    "Instruction:\n{prompt}"
)


def model_units(rewriter: Rewriter | LoadedModel, prompt: str, *, seed: int, max_units: int = MAX_UNITS) -> Units:
    """Units the rewriter marks with <mask> tags (the paper's way); the splitter's units when unusable.

    SmolLM2-135M-Instruct copies the prompt but does not add the tags (checked with chat and few-shot
    forms), so with it this always falls back; capable models can mark units as the paper does.
    """
    rewriter = as_rewriter(rewriter)
    message = MARK_REQUEST.format(max_units=max_units, prompt=prompt)
    lm = local_model(rewriter)
    # The reply copies the prompt with tags: twice its tokens and room for the tags. A remote rewriter's
    # tokenizer is unknown; ~3 characters a token is a safe side of English text for common tokenizers.
    prompt_tokens = len(lm.tokenizer.encode(prompt, add_special_tokens=False)) if lm else len(prompt) // 3 + 1
    budget = 2 * prompt_tokens + 8 * max_units + 16
    # Low temperature: the reply should copy the prompt, so near-greedy; the seed keeps it reproducible.
    if lm is None:
        reply = rewriter.reply(message, n=1, temperature=0.3, top_p=1.0, seed=seed, max_tokens=budget)[0]
    else:
        request = chat_request(lm.tokenizer, message)
        reply = sample(lm, request, 1, seed=seed, max_new_tokens=budget, temperature=0.3)[0]
    return marked_units(reply, prompt, max_units) or segment(prompt, max_units)


def _stripped(text: str, start: int, end: int) -> Span:
    """[start, end) narrowed to exclude leading and trailing whitespace."""
    piece = text[start:end]
    lead = len(piece) - len(piece.lstrip())
    return (start + lead, start + len(piece.rstrip())) if piece.strip() else (start, start)


def _line_spans(prompt: str) -> list[Span]:
    spans = [_stripped(prompt, m.start(), m.end()) for m in _LINE.finditer(prompt)]
    return [s for s in spans if s[0] < s[1]]


def _sentence_spans(text: str) -> list[Span]:
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        words = text[start : match.start() + 1].split()
        if words and words[-1].rstrip(".").lower() in _ABBREVIATIONS:  # "e.g. Paris", "Dr. Smith"
            continue
        spans.append(_stripped(text, start, match.end()))
        start = match.end()
    spans.append(_stripped(text, start, len(text)))
    return [s for s in spans if s[0] < s[1]]


def _whole(pieces: list[Span], demonstrations: list[Span]) -> list[Span]:
    """The pieces with those inside a demonstration replaced by that demonstration's one span."""
    out: list[Span] = []
    for piece in pieces:
        block = next((b for b in demonstrations if b[0] <= piece[0] < b[1]), piece)
        if not out or out[-1] != block:
            out.append(block)
    return out


def _merge(pieces: list[Span], max_units: int) -> list[Span]:
    """Merge adjacent pieces until at most `max_units` remain, always the shortest adjacent pair (leftmost
    on ties), so units end up balanced by length and the result is deterministic. A merged unit is the
    prompt's text from the first piece's start to the second's end, separator included."""
    pieces = list(pieces)
    while len(pieces) > max(max_units, 1):
        sizes = [(a[1] - a[0]) + (b[1] - b[0]) for a, b in zip(pieces, pieces[1:])]
        i = sizes.index(min(sizes))
        pieces[i : i + 2] = [(pieces[i][0], pieces[i + 1][1])]
    return pieces
