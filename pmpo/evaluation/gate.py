"""The promotion gate: a candidate replaces production only when the held-out examples say so beyond their noise.

Two prompts scored on the same held-out examples differ by a mean and by its uncertainty. A point rule ("1% lower")
promotes on noise as often as on gain when the two differ by less than their paired standard error, and a rule
that is judged night after night on noise ratchets production along whatever the held-out set happens to favour.
So the gate asks for the paired interval (pmpo.evaluation.stats) of the change to clear the margin:

- loss: the whole interval of the relative change (candidate - production, per example, over production's mean)
  lies below -margin;
- accuracy, where measured: the interval of its change reaches no lower than -max_accuracy_drop (a non-inferiority
  check: a lower loss with fewer right answers is the shifted label prior the loss can reward, not a gain).
  Multiple choice is judged by acc_norm (the option likeliest per byte), else by generated answers.
- tempered loss, where preference pairs were softened: its interval clears the margin too, as the optimizer's
  selection gate asks on the training set (`SelectionSettings.tempered_gate`). A prompt that only makes the model
  less sure lowers the loss of pairs it ranks wrong towards ln 2 without ranking one more right; at each prompt's
  best softening that gain is gone, a better ranking's is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from pmpo.errors import PmpoError
from pmpo.evaluation.heldout import Evaluation
from pmpo.evaluation.stats import Interval, paired_bootstrap

# Why a decision went the way it did (the record's and the summary's one word for it).
Why = Literal["promoted", "no_loss_gain", "loss_interval_crosses_margin", "only_less_sure", "accuracy_drop"]


@dataclass(frozen=True)
class Verdict:
    """What the gate decided about one candidate, and the intervals it decided on."""

    promote: bool
    why: Why
    reason: str  # one line for people: the numbers and the rule they met or missed
    loss: Interval  # relative change of the mean held-out loss (candidate vs production)
    accuracy: Interval | None  # change in the share right (None: no accuracy measured)
    accuracy_name: str | None  # acc_norm | accuracy
    tempered: Interval | None = None  # relative change of the tempered loss (None: nothing softened, or not recorded)


def judge(
    production: Evaluation,
    candidate: Evaluation,
    *,
    margin: float,
    max_accuracy_drop: float | None,
    confidence: float = 0.95,
    seed: int = 0,
) -> Verdict:
    """Promote `candidate` over `production` (scored on the same examples) only when both intervals allow it."""
    if not production.example_losses or len(production.example_losses) != len(candidate.example_losses):
        raise PmpoError(
            "the promotion gate needs both prompts' per-example losses on the same examples, not "
            f"{len(production.example_losses)} and {len(candidate.example_losses)}"
        )
    loss = paired_bootstrap(
        production.example_losses, candidate.example_losses, seed=seed, confidence=confidence, relative=True
    )
    name, before, after = _accuracy_pair(production, candidate)
    accuracy = paired_bootstrap(before, after, seed=seed, confidence=confidence) if name else None
    level = f"{confidence:.0%}"
    said = f"held-out loss {_pct(loss.estimate)} ({level} interval {_pct(loss.low)} .. {_pct(loss.high)})"
    if accuracy is not None:
        said += (
            f"; {name} {_points(accuracy.estimate)} ({level} interval {_points(accuracy.low)} .. "
            f"{_points(accuracy.high)})"
        )
    if loss.estimate >= -margin:
        return Verdict(False, "no_loss_gain", f"not better: {said}; needed below -{margin:.1%}", loss, accuracy, name)
    if loss.high >= -margin:
        why = f"not better beyond the noise: the loss interval crosses -{margin:.1%}: {said}"
        return Verdict(False, "loss_interval_crosses_margin", why, loss, accuracy, name)
    tempered = _tempered_change(production, candidate, seed=seed, confidence=confidence)
    if tempered is not None and tempered.high >= -margin:
        why = (
            f"only less sure: at each prompt's best softening the loss changes {_pct(tempered.estimate)} ({level} "
            f"interval {_pct(tempered.low)} .. {_pct(tempered.high)}), not below -{margin:.1%}: {said}"
        )
        return Verdict(False, "only_less_sure", why, loss, accuracy, name, tempered)
    if accuracy is not None and max_accuracy_drop is not None and accuracy.low < -max_accuracy_drop - 1e-12:
        why = f"{name} may drop beyond {max_accuracy_drop * 100:.1f} points: {said}"
        return Verdict(False, "accuracy_drop", why, loss, accuracy, name, tempered)
    return Verdict(True, "promoted", f"better: {said}", loss, accuracy, name, tempered)


def _tempered_change(production: Evaluation, candidate: Evaluation, *, seed: int, confidence: float) -> Interval | None:
    """The relative change of the tempered held-out loss; None where either side has none recorded or neither was
    softened (then it is the loss's own change, already judged)."""
    before, after = production.example_tempered_losses, candidate.example_tempered_losses
    if not before or len(before) != len(after):
        return None
    if before == production.example_losses and after == candidate.example_losses:
        return None
    return paired_bootstrap(before, after, seed=seed, confidence=confidence, relative=True)


def _accuracy_pair(
    production: Evaluation, candidate: Evaluation
) -> tuple[str | None, Sequence[float], Sequence[float]]:
    """The accuracy the gate guards: acc_norm for multiple choice (it does not favour short options), else generated
    answers; (None, ...) when neither was measured for both prompts."""
    for name, field in (("acc_norm", "example_option_correct_norm"), ("accuracy", "example_correct")):
        before, after = getattr(production, field), getattr(candidate, field)
        if before and after and len(before) == len(after):
            return name, [float(x) for x in before], [float(x) for x in after]
    return None, [], []


def _pct(x: float) -> str:
    return f"{x:+.1%}"


def _points(x: float) -> str:
    return f"{x * 100:+.1f} points"
