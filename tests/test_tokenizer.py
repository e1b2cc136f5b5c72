"""The offline GPT-2 tokenizer gives the book's token IDs; the ch05 helpers round-trip."""
import numpy as np
import pytest

from tinygrad_gpt.tokenizer import (ENDOFTEXT_ID, get_gpt2_tokenizer, text_to_token_ids,
                                    token_ids_to_text)

from helpers import VERDICT, needs_verdict


@pytest.fixture(scope="module")
def tokenizer():
    return get_gpt2_tokenizer()


def test_every_effort_moves_you_gives_the_books_token_ids(tokenizer):
    assert tokenizer.encode("Every effort moves you") == [6109, 3626, 6100, 345]


def test_vocab_size_and_endoftext_id_are_gpt2s(tokenizer):
    assert tokenizer.n_vocab == 50257
    assert tokenizer.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [ENDOFTEXT_ID]


@needs_verdict
def test_the_verdict_tokenizes_to_5145_tokens_as_in_the_book(tokenizer):
    text = VERDICT.read_text(encoding="utf-8")
    assert len(text) == 20479
    assert len(tokenizer.encode(text)) == 5145


def test_tokenizer_is_built_once_and_cached():
    assert get_gpt2_tokenizer() is get_gpt2_tokenizer()


def test_text_to_token_ids_adds_a_batch_dimension_int64(tokenizer):
    ids = text_to_token_ids("Every effort moves you", tokenizer)
    assert ids.dtype == np.int64 and ids.shape == (1, 4)
    np.testing.assert_array_equal(ids, [[6109, 3626, 6100, 345]])


@pytest.mark.parametrize("text", [
    "Every effort moves you",
    "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace.",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "naïve café — “quotes” 12345 日本語 🙂",
])
def test_round_trip_text_to_ids_and_back(tokenizer, text):
    ids = text_to_token_ids(text, tokenizer)                      # (1, n)
    assert token_ids_to_text(ids, tokenizer) == text


def test_token_ids_to_text_takes_2d_1d_arrays_and_lists(tokenizer):
    ids = [6109, 3626, 6100, 345]
    for form in (np.array([ids]), np.array(ids), ids, [ids]):
        assert token_ids_to_text(form, tokenizer) == "Every effort moves you"


def test_token_ids_to_text_rejects_a_real_batch(tokenizer):
    with pytest.raises(ValueError, match=r"\(1, n\) or \(n,\)"):
        token_ids_to_text(np.zeros((2, 3), dtype=np.int64), tokenizer)
