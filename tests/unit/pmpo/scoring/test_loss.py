"""The scorer: target masking, batching, packing, prefix reuse and the preference loss, against the naive loop."""

import math

import numpy as np
import pytest
import torch

from pmpo.data.examples import MultipleChoice, Preference, Supervised
from pmpo.evaluation.heldout import option_hits
from pmpo.models.loading import ModelSettings, load_model
from pmpo.scoring import prefix_attention
from pmpo.scoring.batching import batches as _batches
from pmpo.scoring.batching import padded_sizes, plan
from pmpo.scoring.loss import Scorer, ScorerSettings, preference_loss
from pmpo.scoring.reference import naive_nll
from pmpo.scoring.temperature import tempered

PROMPTS = ["Classify the sentiment as positive or negative.", "", "Line one.\nLine two is longer than line one."]
EXAMPLES = [
    Supervised("Review: great phone.", "positive"),
    Supervised("Review: it broke on the first day and support never answered my emails.", "negative"),
    Supervised("x", "a much longer reference output that spans many tokens, to force padding"),
]


def naive_matrix(lm, prompts, examples):
    return np.array([[naive_nll(lm, p, e.input, e.target)[0] for e in examples] for p in prompts])


# Varied lengths: several short inputs get packed into one row, the long target gets a row of its own.
VARIED = EXAMPLES + [
    Supervised("Review: ok.", "neutral"),
    Supervised("Review: bad.", "negative"),
    Supervised("Review: the battery lasts two days and the screen is bright even outside.", "positive"),
    Supervised("a", "b"),
]
MODES = {
    "shared": ScorerSettings(prefix_attention="shared"),
    "expand": ScorerSettings(prefix_attention="expand"),
    "no-reuse": ScorerSettings(reuse_prefix=False),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("budget", [16, 4096])
def test_batched_equals_naive_on_tiny_model(tiny_lm, mode, budget):
    scorer = Scorer(tiny_lm, ScorerSettings(**{**MODES[mode].__dict__, "token_budget": budget}))
    matrix = scorer.loss_matrix(PROMPTS, VARIED)
    assert matrix.loss.shape == (3, len(VARIED))
    np.testing.assert_allclose(matrix.loss, naive_matrix(tiny_lm, PROMPTS, VARIED), rtol=1e-4)


def test_prefix_modes_agree_and_shared_computes_fewest_tokens(tiny_lm):
    computed, losses = {}, {}
    for mode, settings in MODES.items():
        scorer = Scorer(tiny_lm, settings)
        losses[mode] = scorer.loss_matrix(PROMPTS[:1], VARIED).loss
        computed[mode] = scorer.tokens_computed
        assert scorer.prefix_fallbacks == 0  # SmolLM2's chat template ends the prompt part at a clean token boundary
    np.testing.assert_allclose(losses["shared"], losses["expand"], rtol=1e-5)
    np.testing.assert_allclose(losses["shared"], losses["no-reuse"], rtol=1e-5)
    # Reuse skips the prompt in every row; packing also skips most padding.
    assert computed["shared"] < computed["expand"] < computed["no-reuse"]


def test_plan_feeds_every_target_once_and_restarts_positions():
    seqs = [[1, 2, 3, 4], [5, 6], [7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]
    starts = [2, 1, 1, 4]
    batches = plan(seqs, starts, budget=40, pack=True, offset=100, pad_id=0)
    assert sorted(i for b in batches for i in b.seqs) == [0, 1, 2, 3]
    counts = [0] * len(seqs)
    for b in batches:
        for t, (r, c) in enumerate(zip(b.rows.tolist(), b.cols.tolist())):
            i = b.seqs[b.owner[t]]
            j = b.positions[r, c].item() - 100  # index within its own sequence: positions restart per sequence
            assert b.ids[r, c].item() == seqs[i][j] and b.targets[t].item() == seqs[i][j + 1]
            assert j + 1 >= starts[i]  # only target tokens are predicted
            counts[i] += 1
        assert b.blocked is not None and b.blocked.shape[1:] == (b.ids.shape[1], b.ids.shape[1])
    assert counts == [len(s) - st for s, st in zip(seqs, starts)]
    assert any(b.ids.shape[0] < len(b.seqs) for b in batches), "short sequences should share a row"


def test_plan_feeds_an_input_once_for_all_its_completions():
    # Three completions of one input (tokens 1 2 3; targets from index 3), and one other sequence.
    seqs = [[1, 2, 3, 10, 11], [1, 2, 3, 20], [1, 2, 3, 30, 31, 32], [4, 5]]
    starts = [3, 3, 3, 1]
    batches = plan(seqs, starts, budget=40, pack=True, offset=100, pad_id=0)
    # 1 2 3 once, then each completion's own fed tokens (10; none; 30 31), then 4: one row, no padding
    assert sum(b.ids.numel() for b in batches) == 7 == sum(padded_sizes(seqs, starts, budget=40, pack=True))
    for b in batches:
        for t, (r, c) in enumerate(zip(b.rows.tolist(), b.cols.tolist())):
            i = b.seqs[b.owner[t]]
            # what the predicting column sees, in order, is exactly its own sequence up to the target
            seen = [b.ids[r, k].item() for k in range(b.ids.shape[1]) if not b.blocked[r, c, k]]
            positions = [b.positions[r, k].item() - 100 for k in range(b.ids.shape[1]) if not b.blocked[r, c, k]]
            j = len(seen)
            assert seen == seqs[i][:j] and positions == list(range(j)) and b.targets[t].item() == seqs[i][j]
    assert plan(seqs, starts, budget=40, pack=False, offset=0, pad_id=0)[0].ids.shape[1] == 5  # unpacked: a copy each


MC = [
    MultipleChoice("Q: which is a colour? Think about the sky on a clear day.", ("blue", "loud", "seven"), "blue"),
    MultipleChoice("Q: 2+2?", ("4", "5", "twenty-two"), "4"),
    Supervised("Review: fine.", "positive"),
]


@pytest.mark.parametrize("budget", [16, 4096])
def test_options_share_their_question_and_score_as_the_naive_loop(tiny_lm, budget):
    computed = {}
    for mode in ("shared", "expand"):
        scorer = Scorer(tiny_lm, ScorerSettings(**{**MODES[mode].__dict__, "token_budget": budget}))
        matrix = scorer.loss_matrix(PROMPTS[:1], MC)
        computed[mode] = scorer.tokens_computed
        for i, e in enumerate(MC[:2]):
            nll, _ = scorer.completions(PROMPTS[0], [(e.input, o) for o in e.options])  # memo: no pass
            naive = [naive_nll(tiny_lm, PROMPTS[0], e.input, o)[0] for o in e.options]
            np.testing.assert_allclose(nll, naive, rtol=1e-4)
        assert matrix.nll[0, 2] == pytest.approx(naive_nll(tiny_lm, PROMPTS[0], MC[2].input, "positive")[0], rel=1e-4)
    # the expanded cache feeds the question once per option; packed rows once per example
    assert computed["shared"] < 0.6 * computed["expand"]


@pytest.mark.parametrize("kernel", ["fused", "matmul"])
def test_shared_prefix_attention_matches_sdpa_on_the_concatenation(monkeypatch, kernel):
    if kernel == "fused" and prefix_attention._FLASH_CPU is None:
        pytest.skip("this PyTorch has no fused CPU attention kernel")
    if kernel == "matmul":
        monkeypatch.setattr(prefix_attention, "_FLASH_CPU", None)
    torch.manual_seed(0)
    batch, heads, kv_heads, length, dim, prefix = 5, 6, 2, 7, 8, 11
    q = torch.randn(batch, heads, length, dim)
    k, v = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    pk, pv = torch.randn(1, kv_heads, prefix, dim), torch.randn(1, kv_heads, prefix, dim)
    # Row 0 holds two packed sequences (columns 0-2 and 3-6); the others one each.
    blocked = torch.ones(length, length, dtype=torch.bool).triu(1).repeat(batch, 1, 1)
    blocked[0, 3:, :3] = True
    full_k = torch.cat([pk.expand(batch, -1, -1, -1), k], 2).repeat_interleave(heads // kv_heads, 1)
    full_v = torch.cat([pv.expand(batch, -1, -1, -1), v], 2).repeat_interleave(heads // kv_heads, 1)
    allowed = torch.cat([torch.ones(batch, length, prefix, dtype=torch.bool), ~blocked], 2)[:, None]
    expected = torch.nn.functional.scaled_dot_product_attention(q, full_k, full_v, attn_mask=allowed)
    monkeypatch.setattr(prefix_attention, "_MAX_SCORE_ELEMENTS", 1)  # one row per chunk: chunking is exact too
    got = prefix_attention.shared_prefix_attention(q, k, v, pk, pv, dim**-0.5, blocked)
    torch.testing.assert_close(got, expected.transpose(1, 2), rtol=1e-5, atol=1e-5)
    causal = torch.nn.functional.scaled_dot_product_attention(
        q, full_k, full_v, attn_mask=allowed[1:2].expand_as(allowed)
    )
    got = prefix_attention.shared_prefix_attention(q, k, v, pk, pv, dim**-0.5)  # no mask: causal in every row
    torch.testing.assert_close(got, causal.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_installed_attention_leaves_plain_forward_passes_alone(tiny_model_dir):
    lm = load_model(ModelSettings(spec=str(tiny_model_dir), dtype="float32"))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.inference_mode():
        before = lm.model(input_ids=ids).logits
        assert prefix_attention.install(lm.model)
        after = lm.model(input_ids=ids).logits
    torch.testing.assert_close(before, after)


def test_only_target_tokens_count(tiny_lm):
    scorer = Scorer(tiny_lm)
    matrix = scorer.loss_matrix(PROMPTS[:1], EXAMPLES)
    expected = [len(tiny_lm.tokenizer(e.target, add_special_tokens=False)["input_ids"]) for e in EXAMPLES]
    assert matrix.tokens[0].tolist() == expected
    # Changing the input changes the loss (it is conditioned on), but the count of scored tokens stays.
    other = scorer.loss_matrix(PROMPTS[:1], [Supervised("something else entirely", EXAMPLES[0].target)])
    assert other.tokens[0, 0] == expected[0]
    assert other.loss[0, 0] != pytest.approx(matrix.loss[0, 0])


def test_loss_is_a_sum_and_per_token_is_the_mean(tiny_lm):
    matrix = Scorer(tiny_lm).loss_matrix(PROMPTS[:1], EXAMPLES)
    assert matrix.prompt_loss()[0] == pytest.approx(matrix.loss[0].mean())
    assert matrix.prompt_loss_per_token()[0] == pytest.approx(matrix.nll[0].sum() / matrix.tokens[0].sum())


def test_memo_scores_each_pair_once(tiny_lm):
    scorer = Scorer(tiny_lm)
    scorer.loss_matrix(PROMPTS, EXAMPLES)
    computed = scorer.tokens_computed
    again = scorer.loss_matrix(list(reversed(PROMPTS)), EXAMPLES)
    assert scorer.tokens_computed == computed
    assert again.loss.shape == (3, 3)


def test_preference_loss_matches_formula(tiny_lm):
    example = Preference("Say hi.", "hi", ("goodbye forever", "no"))
    scorer = Scorer(tiny_lm)
    matrix = scorer.loss_matrix(PROMPTS[:1], [example])
    chosen = naive_nll(tiny_lm, PROMPTS[0], example.input, "hi")[0]
    rejected = [naive_nll(tiny_lm, PROMPTS[0], example.input, r)[0] for r in example.rejected]
    expected = np.mean([-math.log(1 / (1 + math.exp(-(r - chosen)))) for r in rejected])
    assert matrix.loss[0, 0] == pytest.approx(expected, rel=1e-4)
    assert matrix.nll[0, 0] == pytest.approx(chosen, rel=1e-4)


def test_multiple_choice_scored_either_way(tiny_lm):
    example = MultipleChoice("Pick one.", ("yes", "no", "maybe"), "no")
    ce = Scorer(tiny_lm, ScorerSettings(mc_objective="ce")).loss_matrix(PROMPTS[:1], [example])
    pref = Scorer(tiny_lm).loss_matrix(PROMPTS[:1], [example])  # the default: the paper's preference recipe
    assert ce.loss[0, 0] == pytest.approx(naive_nll(tiny_lm, PROMPTS[0], "Pick one.", "no")[0], rel=1e-4)
    assert pref.loss[0, 0] != pytest.approx(ce.loss[0, 0])
    assert pref.nll[0, 0] == pytest.approx(ce.nll[0, 0])


def test_preference_loss_properties():
    assert preference_loss(1.0, [1.0]) == pytest.approx(math.log(2))
    assert preference_loss(0.0, [50.0]) < 1e-10  # chosen far more likely: no loss
    assert preference_loss(50.0, [0.0]) == pytest.approx(50.0)  # stable for large margins
    assert preference_loss(1.0, [2.0, 3.0]) == pytest.approx(
        (preference_loss(1.0, [2.0]) + preference_loss(1.0, [3.0])) / 2
    )


def test_batches_respect_budget():
    lengths = [10, 9, 9, 5, 3, 3, 1]
    batches = _batches(list(range(7)), lengths, budget=20)
    assert [i for b in batches for i in b] == list(range(7))
    assert all(len(b) * lengths[b[0]] <= 20 or len(b) == 1 for b in batches)


DEMO_PROMPTS = [
    "Classify the sentiment of the review as positive or negative. Answer with one word.",
    "Is this review positive or negative?",
    "Read the text.",
    "Write a short poem about the sea.",
]


@pytest.mark.real_model
def test_real_model_batched_equals_per_example_fp32(real_lm):
    from pmpo.data import demo_task

    examples = list(demo_task().examples[:6]) + [Supervised("Review: fine.", "a longer reference answer, to pad")]
    prompts = DEMO_PROMPTS[:2]
    matrix = Scorer(real_lm).loss_matrix(prompts, examples)
    np.testing.assert_allclose(matrix.loss, naive_matrix(real_lm, prompts, examples), rtol=1e-3)


@pytest.mark.real_model
def test_real_model_options_after_one_shared_question_equal_the_naive_loop_fp32(real_lm):
    question = MultipleChoice(
        "Today is 3/5, and it is Jane's second time in the year 1973 to see a meteor shower. What is the date a month "
        "ago in MM/DD/YYYY?",
        ("02/05/1973", "03/08/1983", "01/02/1973", "03/05/2007", "01/05/2007", "02/05/1973 or later"),
        "02/05/1973",
    )
    scorer = Scorer(real_lm)
    scorer.loss_matrix(DEMO_PROMPTS[:1], [question, MC[0]])
    for e in (question, MC[0]):
        nll, _ = scorer.completions(DEMO_PROMPTS[0], [(e.input, o) for o in e.options])  # memo: no pass
        naive = [naive_nll(real_lm, DEMO_PROMPTS[0], e.input, o)[0] for o in e.options]
        np.testing.assert_allclose(nll, naive, rtol=1e-3)


@pytest.mark.real_model
def test_bf16_keeps_the_fp32_ranking_on_the_demo_task(real_lm):
    from pmpo.data import demo_task

    # bf16 runs on CUDA or natively on the CPU where it is fast, and emulated (slow but correct) otherwise.
    examples = demo_task().examples[:8]
    fp32 = Scorer(real_lm).loss_matrix(DEMO_PROMPTS, examples).prompt_loss()
    bf16_lm = load_model(ModelSettings(dtype="bfloat16"))
    bf16 = Scorer(bf16_lm).loss_matrix(DEMO_PROMPTS, examples).prompt_loss()
    assert list(np.argsort(bf16)) == list(np.argsort(fp32)) == [0, 1, 2, 3]
    np.testing.assert_allclose(bf16, fp32, rtol=0.05)  # bf16 keeps ~3 significant digits per activation


@pytest.mark.parametrize("fast", [True, False])
def test_auto_dtype_follows_the_bf16_probe_on_cpu(monkeypatch, fast):
    from pmpo.models import loading as models

    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: fast)
    assert models.resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if fast else torch.float32)
    assert models.resolve_dtype("float32", torch.device("cpu")) == torch.float32


def test_multiple_choice_hits_come_from_the_loss_passes(tiny_lm):
    """The option ranking (acc, acc_norm) is read off the loss's own forward passes: no pass is added for it."""
    examples = [
        MultipleChoice("Q: 2+2?", ("4", "5", "22"), "4"),
        MultipleChoice("Q: sky?", ("blue", "green"), "blue"),
        Supervised("Review: fine.", "positive"),
    ]
    scorer = Scorer(tiny_lm, ScorerSettings(token_budget=1, reuse_prefix=False))  # one pass per sequence
    before = tiny_lm.usage.snapshot()
    matrix = scorer.loss_matrix(["Answer."], examples)
    passes = (tiny_lm.usage.snapshot() - before).forward_passes
    assert passes == 3 + 2 + 1  # every option of each question once, the reference once: as before hits existed
    assert np.isnan(matrix.hits[0, 2])  # not multiple choice: nothing ranked
    for i, e in enumerate(examples[:2]):
        nll, _ = scorer.completions("Answer.", [(e.input, o) for o in e.options])  # memo: no pass
        assert matrix.hits[0, i] == float(int(np.argmin(nll)) == e.options.index(e.target))
    assert matrix.prompt_accuracy() == [float(np.nanmean(matrix.hits[0]))]
    # acc_norm from the same passes ranks as the held-out evaluation does (per UTF-8 byte of each option)
    held = option_hits(scorer, "Answer.", examples[:2])
    assert list(matrix.hits_norm[0, :2]) == [float(c) for c in held.correct_norm]
    assert matrix.prompt_accuracy(norm=True) == [float(np.mean(held.correct_norm))]
    ce = Scorer(tiny_lm, ScorerSettings(mc_objective="ce")).loss_matrix(["Answer."], examples)
    assert np.isnan(ce.hits).all() and ce.prompt_accuracy() == [None]  # the answer alone ranks nothing


def test_the_tempered_losses_soften_the_preference_pairs_only(tiny_lm):
    examples = [
        MultipleChoice("Q: 2+2?", ("4", "5", "22"), "4"),
        Preference("Say hi.", "hi", ("goodbye forever",)),
        Supervised("Review: fine.", "positive"),
    ]
    scorer = Scorer(tiny_lm, ScorerSettings(beta=2.0))
    matrix = scorer.loss_matrix(PROMPTS, examples)
    assert np.array_equal(matrix.tempered[:, 2], matrix.loss[:, 2])  # a reference's CE is not softened
    for p, prompt in enumerate(PROMPTS):
        margins = []
        for e in examples[:2]:
            chosen, *others = e.options if isinstance(e, MultipleChoice) else (e.chosen, *e.rejected)
            nll, _ = scorer.completions(prompt, [(e.input, c) for c in (chosen, *others)])  # memo: no pass
            margins.append(2.0 * (nll[1:] - nll[0]))
        assert matrix.tempered[p, :2] == pytest.approx(tempered(margins))
        assert matrix.tempered[p, :2].mean() <= matrix.loss[p, :2].mean() + 1e-9
    again = matrix.weighted(np.array([2.0, 1.0, 0.5]))
    assert again.tempered == pytest.approx(matrix.tempered * [2.0, 1.0, 0.5])
