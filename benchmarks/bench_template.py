"""What a template whose first variable comes early costs against an instruction prompt: prefix reuse lost.

    python benchmarks/bench_template.py              # 40 examples x 3 variants of each prompt form (~2 min here)
    python benchmarks/bench_template.py --examples 10 --variants 1   # smoke run

The scorer computes the KV cache of everything before the first example text once per candidate and reuses it
for every example (pmpo.scoring.loss). An instruction prompt (the input after it) and a template whose variable comes at
its end share the whole instruction; a template that opens with its variable shares only the chat header, so
every example runs the instruction again. Three forms of the same instruction are scored on the same examples,
each as `--variants` distinct candidates (a candidate's prefix is computed once); the table gives the tokens run
through the model and the wall time per candidate, and the early template against the instruction prompt.

Measured here (SmolLM2-135M fp32, 2 CPU cores shared with other jobs, 40 examples x 3 candidates per form):

    prompt form                       tokens/cand   s/cand  x tokens  x time fallbacks
    instruction (input after it)             1288    30.90      1.00    1.00         0
    template, variable last                  1335    33.51      1.04    1.08         0
    template, variable first                 5633    99.24      4.37    3.21         0
"""

from __future__ import annotations

import argparse
import time

from pmpo.data import load_dataset
from pmpo.data.rows import ColumnMap
from pmpo.models.loading import ModelSettings, load_model
from pmpo.scoring.loss import Scorer

INSTRUCTION = (
    "You read short product reviews written by customers of an online shop and decide how the customer feels "
    "about the product. A review is positive when the customer is satisfied overall: it praises the quality, "
    "the value for money, the comfort or the look of the product, even if it mentions a small flaw. A review is "
    "negative when the customer is disappointed overall: the product broke, arrived damaged, did not match the "
    "description or was not worth its price. Answer with one word, positive or negative, in lower case."
)
FORMS = {
    "instruction (input after it)": INSTRUCTION,
    "template, variable last": INSTRUCTION + "\n\nReview: {{review}}",
    "template, variable first": "Review: {{review}}\n\n" + INSTRUCTION,
}


def main(argv: list[str] | None = None) -> None:
    """Score each prompt form and print tokens and seconds per candidate."""
    args = _parse(argv)
    lm = load_model(ModelSettings())
    plain = load_dataset("builtin:sentiment", limit=args.examples)
    fields = load_dataset(
        "builtin:sentiment", limit=args.examples, columns=ColumnMap.from_pairs(["review=input"]), variables=("review",)
    )
    rows = []
    for label, text in FORMS.items():
        data = plain if "{{" not in text else fields
        prompts = [text + " " * i for i in range(args.variants)]  # distinct candidates: no memo, own prefix each
        scorer = Scorer(lm)
        scorer.loss_matrix(prompts[:1], data.examples[:2])  # warm-up (kernels, chat template)
        scorer = Scorer(lm)
        start = time.perf_counter()
        scorer.loss_matrix(prompts, data.examples)
        seconds = (time.perf_counter() - start) / len(prompts)
        rows.append((label, scorer.tokens_computed / len(prompts), seconds, scorer.prefix_fallbacks))
    base_tokens, base_seconds = rows[0][1], rows[0][2]
    print(
        f"{args.examples} examples, {args.variants} candidate(s) per form, model {lm.identity} ({lm.dtype}, {lm.device})"
    )
    print(f"{'prompt form':32} {'tokens/cand':>12} {'s/cand':>8} {'x tokens':>9} {'x time':>7} {'fallbacks':>9}")
    for label, tokens, seconds, fallbacks in rows:
        print(
            f"{label:32} {tokens:12.0f} {seconds:8.2f} {tokens / base_tokens:9.2f} {seconds / base_seconds:7.2f} {fallbacks:9d}"
        )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=40, help="sentiment examples each candidate is scored on")
    parser.add_argument("--variants", type=int, default=3, help="candidates per prompt form")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
