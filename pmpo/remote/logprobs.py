"""The completion's log-probabilities in an echoed `/v1/completions` choice, found by character offsets.

Pure functions on the response's `logprobs` mapping (`tokens`, `token_logprobs`, `text_offset`), so they can
be checked on recorded responses. Boundary rule as in pmpo.text.encoding: a token that holds any character of the
completion is a target token, even if it also holds the end of the context.

SGLang's `/v1/completions` sends `text_offset` -1 for every token ("not supported yet"); its tokens' texts spell
the echoed text, so their offsets are found by reading the tokens in order (`spelled_offsets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pmpo.errors import PmpoError


class LogprobsMissing(PmpoError):
    """The server's reply lacks the echoed prompt log-probabilities pmpo scores with."""


@dataclass(frozen=True)
class TokenLogprobs:
    """The echoed prompt's tokens: where each starts in the text, and its log-prob (None: the first token)."""

    offsets: tuple[int, ...]
    logprobs: tuple[float | None, ...]
    text_length: int  # characters of the prompt sent; tokens past it were generated

    def spans(self) -> list[tuple[int, int]]:
        """[start, end) of each prompt token: it runs to the next token's start (the last one to the text's end)."""
        ends = [*self.offsets[1:], self.text_length]
        return [(s, min(e, self.text_length)) for s, e in zip(self.offsets, ends)]

    def target(self, start: int) -> list[float | None]:
        """Log-probs of the tokens that hold a character at or after `start` (the completion)."""
        return [lp for (s, e), lp in zip(self.spans(), self.logprobs) if e > start or s >= start]

    def mean(self, lo: int, hi: int) -> float:
        """Mean log-prob of the tokens starting in [lo, hi) that have one."""
        values = [lp for (s, _), lp in zip(self.spans(), self.logprobs) if lo <= s < hi and lp is not None]
        if not values:
            raise LogprobsMissing(f"no scored token starts in characters {lo}..{hi} of the echoed text")
        return sum(values) / len(values)


def prompt_logprobs(choice: Mapping[str, Any], text: str, lead: str = "") -> TokenLogprobs:
    """The echoed prompt tokens of one completion `choice` (a dict) for the prompt `text`.

    `lead`: a BOS token's text that `text` begins with and the server may leave out of its echoed tokens
    (llama-cpp-python drops a leading BOS and counts offsets from after it); offsets are then moved back.
    """
    lp = choice.get("logprobs")
    if not lp or lp.get("token_logprobs") is None or lp.get("text_offset") is None:
        raise LogprobsMissing(
            "the server returned no prompt log-probabilities (logprobs.token_logprobs / text_offset missing): "
            "it ignores `echo` or `logprobs` on /v1/completions"
        )
    offsets, values, tokens = list(lp["text_offset"]), list(lp["token_logprobs"]), lp.get("tokens")
    if offsets and all(o == -1 for o in offsets):  # SGLang: no offsets, but tokens that spell the text
        offsets = spelled_offsets(tokens, str(choice.get("text", "")))
        kept = [i for i, o in enumerate(offsets) if o >= 0]  # a leading BOS the text does not hold is left out
        offsets, values, tokens = [offsets[i] for i in kept], [values[i] for i in kept], [tokens[i] for i in kept]
    if len(offsets) != len(values):
        raise LogprobsMissing(f"the server returned {len(offsets)} token offsets but {len(values)} log-probs")
    if not str(choice.get("text", "")).startswith(text) or not offsets or offsets[0] != 0:
        raise LogprobsMissing(
            "the server did not echo the prompt (`echo: true` ignored): its tokens are not in the reply"
        )
    skipped = _dropped_lead(tokens, text, lead)
    offsets = [o + skipped for o in offsets]
    n = sum(1 for o in offsets if o < len(text))  # tokens past the prompt were generated (max_tokens)
    if any(b < a for a, b in zip(offsets[:n], offsets[1:n])):
        raise LogprobsMissing("the server's text_offset values go backwards: they are not character offsets")
    _check_offsets(tokens, offsets[:n], text)
    return TokenLogprobs(tuple(offsets[:n]), tuple(values[:n]), len(text))


def spelled_offsets(tokens: Sequence[str] | None, text: str) -> list[int]:
    """Each token's first character in `text`, read off tokens whose texts spell it in order.

    Leading tokens whose texts are not in `text` (a BOS the server added, e.g. `<|begin_of_text|>`) get -1, as do
    tokens past its end; a token holding part of a character (U+FFFD) cannot be placed, and the reply is refused.
    """
    if not tokens:
        raise LogprobsMissing("the server returned no text_offset values and no tokens to find them from")
    offsets, at = [], 0
    for i, token in enumerate(tokens):
        if at >= len(text) or (at == 0 and not text.startswith(token)):
            offsets.append(-1)
            continue
        offsets.append(at)
        if "\ufffd" in token:
            raise LogprobsMissing(
                f"the server returned no text_offset values, and token {i} ({token!r}) holds part of a character, "
                "so the tokens cannot be placed in the text"
            )
        if not text.startswith(token, at):
            raise LogprobsMissing(
                f"the server returned no text_offset values, and its tokens do not spell the text (token {i}, "
                f"{token!r}, is not at character {at})"
            )
        at += len(token)
    return offsets


def _dropped_lead(tokens: Sequence[str] | None, text: str, lead: str) -> int:
    """len(lead) when the echoed tokens start after `lead` (their offsets count from there), else 0."""
    first = tokens[0] if tokens else ""
    if lead and first and text.startswith(lead) and not text.startswith(first) and text.startswith(first, len(lead)):
        return len(lead)
    return 0


def _check_offsets(tokens: Sequence[str] | None, offsets: Sequence[int], text: str) -> None:
    """Each echoed token's text must stand at its offset, or the offsets cannot locate the completion."""
    for i, (token, at) in enumerate(zip(tokens or (), offsets)):
        # '' and U+FFFD: a special token rendered as nothing, or part of a character split across tokens
        if token and "\ufffd" not in token and text[at : at + len(token)] != token:
            raise LogprobsMissing(
                f"the server's text_offset does not locate its tokens in the text (token {i}, {token!r}, is not at "
                f"character {at}): llama.cpp's server counts no characters for special tokens such as <|im_end|>, "
                "so a chat-template text cannot be scored through it (placement: plain avoids them)"
            )


def completion_nll(choice: Mapping[str, Any], text: str, start: int, lead: str = "") -> tuple[float, int]:
    """(summed NLL, token count) of the completion `text[start:]` in an echoed choice (`lead`: as above)."""
    values = prompt_logprobs(choice, text, lead).target(start)
    if not values:
        raise LogprobsMissing(f"no echoed token holds the completion (characters {start}..{len(text)})")
    if any(v is None for v in values):  # only the very first token has none: nothing precedes it
        raise LogprobsMissing("the completion's first token has no log-prob: nothing precedes it to predict it from")
    return -float(sum(values)), len(values)


def choices_in_order(choices: Sequence[Mapping[str, Any]], expected: int) -> list[Mapping[str, Any]]:
    """The choices of a multi-prompt request sorted by `index`; an error when some are missing."""
    ordered = sorted(choices, key=lambda c: c.get("index", 0))
    if [c.get("index", 0) for c in ordered] != list(range(expected)):
        raise LogprobsMissing(f"sent {expected} prompts in one request, got {len(choices)} choices back")
    return ordered
