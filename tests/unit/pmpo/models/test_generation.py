"""Sampling and greedy decoding on the tiny random model: determinism, batching, stopping (no quality)."""

import torch

from pmpo.models.generation import greedy, sample, stop_token_ids
from pmpo.text.rendering import chat_request


def _request(lm, message):
    return chat_request(lm.tokenizer, message)


def test_sample_is_reproducible_by_seed_and_leaves_global_rng_alone(tiny_lm):
    text = _request(tiny_lm, "Write a word.")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = sample(tiny_lm, text, 3, seed=7, max_new_tokens=8)
    assert torch.equal(torch.rand(3), expected_next)  # global RNG state untouched
    assert sample(tiny_lm, text, 3, seed=7, max_new_tokens=8) == first
    assert len(first) == 3 and all(isinstance(s, str) for s in first)
    other = sample(tiny_lm, text, 3, seed=8, max_new_tokens=8)
    assert other != first  # a random 49k-token model practically never repeats 3x8 tokens


def test_sample_returns_only_the_continuation_without_special_tokens(tiny_lm):
    text = _request(tiny_lm, "Write a word.")
    for out in sample(tiny_lm, text, 2, seed=0, max_new_tokens=6):
        assert "<|im_start|>" not in out and "Write a word." not in out


def test_sample_n_zero_is_empty(tiny_lm):
    assert sample(tiny_lm, "x", 0, seed=0) == []


def test_sample_stop_strings_end_the_continuation_early(tiny_lm):
    text = _request(tiny_lm, "Write a word.")
    free = sample(tiny_lm, text, 2, seed=3, max_new_tokens=16)
    assert len(free[0].strip()) > 4  # the seed gives a long enough output to cut
    stop = free[0].strip()[1:3]  # occurs inside the output, after its first character
    stopped = sample(tiny_lm, text, 2, seed=3, max_new_tokens=16, stop=(stop,))
    assert stop in stopped[0] and free[0].startswith(stopped[0])
    assert len(stopped[0]) < len(free[0])


def test_greedy_batched_equals_unbatched(tiny_lm):
    texts = [
        _request(tiny_lm, "Hi."),
        _request(tiny_lm, "A much longer request that needs a lot more padding on the left side."),
        _request(tiny_lm, "Middle length request here."),
        "plain text without a chat template",
    ]
    alone = [greedy(tiny_lm, [t], max_new_tokens=10)[0] for t in texts]
    batched = greedy(tiny_lm, texts, max_new_tokens=10, batch_size=3)
    assert batched == alone
    assert greedy(tiny_lm, texts, max_new_tokens=10) == alone


def test_greedy_of_nothing_is_nothing(tiny_lm):
    assert greedy(tiny_lm, []) == []


def test_stop_tokens_include_the_end_of_turn_marker(tiny_lm):
    assert tiny_lm.tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tiny_lm)
