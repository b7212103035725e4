"""Exact scoring on a SentencePiece-style tokenizer (Metaspace, prefix space, merges across the boundary),
against a full-sequence reference that shares none of the scorer's tokenising code (pmpo.scoring.reference)."""

import numpy as np
import pytest

from pmpo.data.examples import Supervised
from pmpo.models.generation import greedy
from pmpo.models.loading import ModelSettings, load_model
from pmpo.scoring.loss import Scorer, ScorerSettings
from pmpo.scoring.reference import naive_nll
from pmpo.text.encoding import encode, encode_text, encode_texts
from pmpo.text.rendering import render, render_many

SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
# Like Llama-2/Gemma templates, it writes BOS into the text itself.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
PROMPTS = ["Classify the review.", "Say positive or negative.", ""]
SEEN = [
    Supervised(i, t)
    for i in ("Review: great phone.", "Review: it broke.", " Review: fine.")
    for t in ("positive", " negative")
]
UNSEEN = [
    Supervised("Quick check: is tofu tasty?", "yes, quite"),
    Supervised("x", "a much longer answer to pad the batch"),
]
EXAMPLES = SEEN + UNSEEN


def build_sentencepiece_like(directory):
    """A tiny BPE with a Metaspace pre-tokenizer (prefix space on the first word), trained on rendered texts
    so that it merges across the prompt/input and context/target boundaries, plus a tiny random Llama."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [
        text
        for p in PROMPTS[:2]
        for e in SEEN
        for text in (f"{p}\n\n{e.input}\n{e.target}", f"<|user|>\n{p}\n\n{e.input}\n<|assistant|>\n{e.target}")
    ] * 3
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set("".join(corpus) + "abcdefghijklmnopqrstuvwxyz,?:▁"))
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=TEMPLATE
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=bos,
        eos_token_id=tok.token_to_id("</s>"),
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    return build_sentencepiece_like(tmp_path_factory.mktemp("sp-model"))


@pytest.fixture(scope="module")
def sp_lms(sp_dir):
    return {
        p: load_model(ModelSettings(spec=str(sp_dir), dtype="float32", placement=p))
        for p in ("plain", "system", "user")
    }


MODES = {
    "shared": ScorerSettings(prefix_attention="shared", token_budget=64),
    "expand": ScorerSettings(prefix_attention="expand"),
    "no-reuse": ScorerSettings(reuse_prefix=False),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("placement", ["plain", "system", "user"])
def test_losses_equal_the_full_sequence_reference(sp_lms, placement, mode):
    lm = sp_lms[placement]
    scorer = Scorer(lm, MODES[mode])
    matrix = scorer.loss_matrix(PROMPTS, EXAMPLES)
    reference = [[naive_nll(lm, p, e.input, e.target) for e in EXAMPLES] for p in PROMPTS]
    np.testing.assert_allclose(matrix.loss, [[r[0] for r in row] for row in reference], rtol=1e-5)
    assert matrix.tokens.tolist() == [[r[1] for r in row] for row in reference]
    if mode == "no-reuse":
        assert scorer.prefix_fallbacks == 0  # no reuse tried, none to fall back from


@pytest.mark.parametrize("placement", ["plain", "system", "user"])
def test_exactly_one_bos(sp_lms, placement):
    lm = sp_lms[placement]
    bos = lm.tokenizer.bos_token_id
    text = render(lm.tokenizer, placement, PROMPTS[0], "Review: ok.").text
    assert text.startswith("<s>") == (placement != "plain")  # the chat template writes BOS itself
    for ids in (
        encode(lm.tokenizer, placement, PROMPTS[0], "Review: ok.", "positive").ids,
        encode_text(lm.tokenizer, text),
    ):
        assert ids[0] == bos and list(ids).count(bos) == 1


def test_a_target_merged_with_its_context_is_scored_on_the_real_tokens(sp_lms):
    tok = sp_lms["plain"].tokenizer
    context = render(tok, "plain", PROMPTS[0], "Review: great phone.").text
    enc = encode(tok, "plain", PROMPTS[0], "Review: great phone.", "positive")
    alone = tok("positive", add_special_tokens=False)["input_ids"]
    # The tokenizer merges the end of the input with the target, and alone it would add a prefix space.
    assert tuple(alone) != enc.target
    first = tok.decode(enc.target)
    assert first.endswith("positive") and first != "positive"  # the straddling token counts as target
    full = tok(context + "positive", add_special_tokens=False)["input_ids"]
    assert enc.ids[1:] == tuple(full)  # exactly the whole text's tokens, after the one BOS


def test_prefix_reuse_falls_back_where_the_prompt_is_not_a_token_prefix(sp_lms):
    lm = sp_lms["plain"]
    tok = lm.tokenizer
    prefix = encode_text(tok, render(tok, "plain", PROMPTS[0], "").prefix)
    merged, spaced = SEEN[0], SEEN[4]  # "Review: ..." merges with "\n\n"; " Review: ..." starts a new piece
    assert encode(tok, "plain", PROMPTS[0], merged.input, merged.target).ids[: len(prefix)] != tuple(prefix)
    assert encode(tok, "plain", PROMPTS[0], spaced.input, spaced.target).ids[: len(prefix)] == tuple(prefix)
    spaced_too = [Supervised(spaced.input, t) for t in ("neutral", "mixed")]
    examples = [merged, spaced, *spaced_too]
    scorer = Scorer(lm, ScorerSettings(prefix_attention="shared"))
    matrix = scorer.loss_matrix(PROMPTS[:1], examples)
    assert scorer.prefix_fallbacks == 1  # most examples share the whole prompt: the merged one runs its full text
    expected = [naive_nll(lm, PROMPTS[0], e.input, e.target)[0] for e in examples]
    np.testing.assert_allclose(matrix.loss[0], expected, rtol=1e-5)
    scorer.loss_matrix(PROMPTS[:1], examples)
    assert scorer.prefix_fallbacks == 1  # memoised: not scored (or counted) again


def test_a_prompt_whose_last_token_merges_everywhere_still_shares_its_first_tokens(sp_lms):
    lm = sp_lms["plain"]
    merged = [e for e in SEEN if not e.input.startswith(" ")]
    reused, folded = (
        Scorer(lm, ScorerSettings(prefix_attention="shared")),
        Scorer(lm, ScorerSettings(reuse_prefix=False)),
    )
    loss = reused.loss_matrix(PROMPTS[:1], merged).loss
    np.testing.assert_allclose(loss, folded.loss_matrix(PROMPTS[:1], merged).loss, rtol=1e-5)
    assert reused.prefix_fallbacks == 0
    assert reused.tokens_computed < folded.tokens_computed  # the prompt's first tokens ran once, not per example


@pytest.mark.parametrize("placement", ["plain", "system"])
def test_generation_starts_from_the_scored_context_ids(sp_lms, placement):
    lm = sp_lms[placement]
    inputs = [e.input for e in EXAMPLES[:4]]
    ids = [encode(lm.tokenizer, placement, PROMPTS[0], inp).ids for inp in inputs]
    texts = [render(lm.tokenizer, placement, PROMPTS[0], inp).text for inp in inputs]
    assert all(list(i).count(lm.tokenizer.bos_token_id) == 1 for i in ids)
    assert greedy(lm, ids, max_new_tokens=6) == greedy(lm, texts, max_new_tokens=6)
    # A context encoded alone is the scored text without a completion: the same ids the scorer conditions on.
    assert [encode_text(lm.tokenizer, t) for t in texts] == [list(i) for i in ids]


class _SlowTokenizer:
    """A tokenizer without offset mappings (like transformers' slow, pure-Python ones)."""

    is_fast = False

    def __init__(self, fast):
        self._fast, self.bos_token_id = fast, fast.bos_token_id

    def __call__(self, texts, **kwargs):
        assert "return_offsets_mapping" not in kwargs
        return self._fast(texts, **kwargs)


def test_tokenizers_without_offsets_find_the_same_target_span(sp_lms):
    tok = sp_lms["plain"].tokenizer
    contexts = [render(tok, pl, p, e.input).text for pl in ("plain", "user") for p in PROMPTS for e in EXAMPLES]
    targets = [e.target for _ in ("plain", "user") for _ in PROMPTS for e in EXAMPLES]
    fast = encode_texts(tok, contexts, targets)
    assert encode_texts(_SlowTokenizer(tok), contexts, targets) == fast
    assert any(f.target_start < len(encode_text(tok, c)) for f, c in zip(fast, contexts))  # some straddle


@pytest.mark.parametrize("placement", ["plain", "system", "user"])
def test_one_rendering_per_prompt_gives_every_context(sp_lms, tiny_lm, placement):
    for tok in (sp_lms[placement].tokenizer, tiny_lm.tokenizer):
        inputs = [e.input for e in EXAMPLES] + ["", "two\\nlines"]
        for prompt in PROMPTS:
            expected = [render(tok, placement, prompt, inp).text for inp in inputs]
            assert render_many(tok, placement, prompt, inputs) == expected
