"""The self-check a server must pass before pmpo trusts its prompt log-probabilities.

It scores a sentence repeated three times. Any language model predicts the last copy almost perfectly (it has
just read it twice): SmolLM2-135M gives it -0.47 nats/token in-process, against -3.93 for the first copy. A
server whose echoed log-probabilities are misaligned by one position (llama-cpp-python's: the value for token
i comes from the logits at i, which predict token i+1) gives the last copy about -11 instead, and is refused.
No in-process copy of the model is needed, so it works for any served model.

A shift by one cannot be undone from the reply: the distribution that predicts token i (the logits at i-1) is
reported only as its top `logprobs` entries keyed by token text, so token i's own log-prob there is unknown
whenever it is not among them. pmpo refuses such a server instead of guessing. llama-cpp-python's cause is
narrower: it drops a leading BOS token from the echo and pairs the rest with the logits one position early,
which is right exactly when the text begins with BOS. `prepend_bos` sends every text that way (and the check
text too, so the check judges what is really sent); it is opt-in because it adds a BOS the model may not
otherwise see, and the check still has the last word.

The order test then asks whether a text's log-probabilities depend on what the server scored before. vLLM's do
when prefix caching is on (vllm-project/vllm#42019, open): positions read from the cache get stale values left by
an earlier request. Two texts that share a prefix are scored in both orders, A then B and B then A, sent as
scoring sends them (together in one request, or one per request); each text's log-probabilities must agree across
the orders, or the server is refused naming the order test. The shared prefix opens with a random number, so this
process's probe is never a cache hit on an earlier one's.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from pmpo.remote.client import CompletionsClient, RemoteError
from pmpo.remote.logprobs import LogprobsMissing, TokenLogprobs, prompt_logprobs

SENTENCE = "The quick brown fox jumps over the lazy dog near the old mill by the river."
COPIES = 3
# The last copy must be predicted this well (nats/token; SmolLM2-135M: -0.47, a misaligned server: ~-11)...
MIN_LAST_COPY = -1.0
# ...and this much better than the first copy (SmolLM2-135M: 3.5 nats/token better), which rules out a
# server that reports a constant or near-zero value for every token.
MIN_GAIN = 1.0
# The order test's texts: a shared prefix (the sentence after a random number) and two different endings.
ORDER_ENDINGS = (" Then the fox slept under the oak tree.", " A farmer counted his sheep twice that evening.")
# One text scored in two orders may differ by batching noise (bf16 kernels: ~0.01 nats/token) but not by this much
# on average (a stale cached prefix: nats per token on the tokens it touches)...
MAX_ORDER_GAP = 0.05
# ...nor by this much on any one token, which catches a stale value on a few tokens that the mean dilutes.
MAX_ORDER_TOKEN_GAP = 1.0

_LOCK = threading.Lock()
_CHECKED: dict[tuple[str, str], "ServerFacts"] = {}


@dataclass(frozen=True)
class ServerFacts:
    """What the self-check found out about one server and served model."""

    identity: str
    prompts_per_request: int  # 1 where the server takes one prompt per request
    first_copy: float  # mean log-prob per token of the first copy
    last_copy: float  # ... and of the last copy
    order_gap: float | None = None  # the order test's mean |difference| per token (None: model.check is off)


def check_text() -> str:
    """The text the self-check scores."""
    return " ".join([SENTENCE] * COPIES)


def judge(first_copy: float, last_copy: float, where: str, hint: bool = True) -> None:
    """Refuse log-probabilities no language model would give the repeated sentence."""
    if last_copy > MIN_LAST_COPY and last_copy - first_copy >= MIN_GAIN:
        return
    fix = (
        "; for llama.cpp's server, model.prepend_bos: true makes them aligned (it scores right after a leading BOS)"
        if hint
        else ""
    )
    raise RemoteError(
        f"{where} returns implausible prompt log-probabilities: a sentence repeated {COPIES} times scores "
        f"{last_copy:.2f} nats/token on its last copy and {first_copy:.2f} on its first (any language model "
        f"predicts the last copy well: expected above {MIN_LAST_COPY} and at least {MIN_GAIN} better than the first). "
        "They are likely misaligned by one position (llama.cpp's server gives token i the log-prob from the logits "
        "at i, not i-1), so pmpo will not score with them; use a server whose echoed log-probabilities are right "
        f"(vLLM){fix}, or set model.check: false only if you have verified them yourself"
    )


def copy_means(choice: dict, text: str, lead: str = "") -> tuple[float, float]:
    """Mean log-prob per token of the first and of the last copy of the sentence in an echoed `choice`
    (`text` is `lead` + check_text())."""
    tokens = prompt_logprobs(choice, text, lead)
    last_start = len(text) - len(SENTENCE)
    return tokens.mean(len(lead), len(lead) + len(SENTENCE)), tokens.mean(last_start, len(text))


def verified(client: CompletionsClient, bos: str = "") -> ServerFacts:
    """The self-check's findings for `client`'s server and model, run once per server identity and process.

    `bos`: the tokenizer's BOS text, put in front of the check text when the settings ask for `prepend_bos`.
    """
    identity = client.identity()
    lead = bos if client.settings.prepend_bos else ""
    with _LOCK:
        if (identity, lead) not in _CHECKED:
            _CHECKED[(identity, lead)] = _run(client, identity, lead)
        return _CHECKED[(identity, lead)]


def _run(client: CompletionsClient, identity: str, lead: str) -> ServerFacts:
    text, where = lead + check_text(), f"the scoring server at {client.settings.base_url}"
    per_request = client.settings.prompts_per_request
    try:  # no retries: a refusal here is an answer (one prompt per request), not a fault to wait out
        choice = client.complete([text, text], retry=False)[1] if per_request > 1 else client.complete([text])[0]
    except (RemoteError, LogprobsMissing):  # some servers (llama-cpp-python) take one prompt per request
        per_request = 1
        choice = _single(client, text, where)
    try:
        first, last = copy_means(choice, text, lead)
    except LogprobsMissing as exc:
        raise RemoteError(f"{where} cannot score prompts: {exc}") from None
    if not client.settings.check:
        return ServerFacts(identity, per_request, first, last)
    judge(first, last, where, hint=not lead)
    gap = order_test(client, per_request, lead, where)
    return ServerFacts(identity, per_request, first, last, gap)


def order_texts(lead: str = "", nonce: int | None = None) -> tuple[str, str]:
    """Two texts that share a prefix, for the order test (`nonce`: the number that opens the prefix)."""
    nonce = secrets.randbelow(10**9) if nonce is None else nonce
    prefix = f"{lead}Note {nonce}: {SENTENCE}"
    return prefix + ORDER_ENDINGS[0], prefix + ORDER_ENDINGS[1]


def order_test(client: CompletionsClient, per_request: int, lead: str, where: str) -> float:
    """Score two overlapping texts A then B, then B then A; refuse the server if a text's log-probs changed.

    Returns the larger of the two texts' mean |difference| per token between the orders (nats/token).
    """
    a, b = order_texts(lead)
    if per_request > 1:
        first = client.complete([a, b])
        second = client.complete([b, a])[::-1]
    else:
        first = [client.complete([t])[0] for t in (a, b)]
        second = [client.complete([t])[0] for t in (b, a)][::-1]
    try:
        pairs = [(prompt_logprobs(x, t, lead), prompt_logprobs(y, t, lead)) for t, x, y in zip((a, b), first, second)]
    except LogprobsMissing as exc:
        raise RemoteError(f"{where} cannot score prompts: {exc}") from None
    mean_gap, token_gap = max(order_gaps(x, y) for x, y in pairs)
    judge_order(mean_gap, token_gap, where)
    return mean_gap


def order_gaps(x: TokenLogprobs, y: TokenLogprobs) -> tuple[float, float]:
    """(mean, largest) |difference| between two scorings of one text, token by token (inf: tokenised differently)."""
    if x.offsets != y.offsets:
        return float("inf"), float("inf")
    diffs = [abs(p - q) for p, q in zip(x.logprobs, y.logprobs) if p is not None and q is not None]
    return (sum(diffs) / len(diffs), max(diffs)) if diffs else (0.0, 0.0)


def judge_order(mean_gap: float, token_gap: float, where: str) -> None:
    """Refuse a server whose log-probs for one text depend on the order it scored texts in."""
    if mean_gap <= MAX_ORDER_GAP and token_gap <= MAX_ORDER_TOKEN_GAP:
        return
    raise RemoteError(
        f"{where} fails the order test: one text scored before and after an overlapping text gets prompt "
        f"log-probabilities {mean_gap:.3f} nats/token apart on average, {token_gap:.3f} on one token (allowed: "
        f"{MAX_ORDER_GAP} and {MAX_ORDER_TOKEN_GAP}). Its scores depend on request order, likely from a prefix "
        "cache that serves stale values (vLLM: start it with --no-enable-prefix-caching, vllm-project/vllm#42019), "
        "so pmpo will not score with it; set model.check: false only if you have verified it yourself"
    )


def _single(client: CompletionsClient, text: str, where: str) -> dict:
    try:
        return client.complete([text])[0]
    except LogprobsMissing as exc:
        raise RemoteError(f"{where} cannot score prompts: {exc}") from None
