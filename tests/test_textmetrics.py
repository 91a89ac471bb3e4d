import math
import zlib

import numpy as np
import pytest

from emonn import textmetrics as tm
from conftest import tiny_tokenizer


def test_units_split_words_and_cjk_characters():
    assert tm.units("Don't STOP, it's 3 o'clock!") == ["don't", "stop", "it's", "3", "o'clock"]
    assert tm.units("東京は日本の首都") == list("東京は日本の首都")
    assert tm.units("Hello 世界 мир_x") == ["hello", "世", "界", "мир", "x"]
    assert tm.units("... !!") == []


def test_perplexity_is_exp_of_mean_negative_logprob():
    assert tm.perplexity(np.log([0.5, 0.5])) == pytest.approx(2.0)
    assert tm.perplexity(np.log([0.25, 1.0])) == pytest.approx(2.0)  # geometric mean of 1/p: sqrt(4 * 1)
    assert math.isnan(tm.perplexity([]))


def test_distinct_n():
    assert tm.distinct("a b c d", 1) == 1.0
    assert tm.distinct("a a a a", 1) == 0.25
    assert tm.distinct("a b a b a", 2) == pytest.approx(2 / 4)  # ab ba ab ba
    assert math.isnan(tm.distinct("one", 2))


@pytest.mark.parametrize("text, n", [("", 0), ("a b c", 0), ("a b a", 1), ("x a b c y a b c", 3),
                                     ("a a a a", 3), ("the cat sat. The cat ran", 2)])
def test_longest_repeat_matches_brute_force(text, n):
    items = tm.units(text)
    brute = max([k for k in range(1, len(items)) for i in range(len(items)) for j in range(i + 1, len(items))
                 if j + k <= len(items) and items[i:i + k] == items[j:j + k]], default=0)
    assert tm.longest_repeat(text) == brute == n


def test_compression_ratio_orders_repetition():
    ordinary = "I wake up early, make coffee, and read the news before the bus comes at eight."
    assert tm.compression_ratio(ordinary) == len(ordinary.encode()) / len(zlib.compress(ordinary.encode(), 9))
    assert tm.compression_ratio("I'm a superhero, " * 8) > 2.5 > tm.compression_ratio(ordinary)
    assert math.isnan(tm.compression_ratio(""))


@pytest.mark.parametrize("char, script", [
    ("a", "Latin"), ("É", "Latin"), ("Ａ", "Latin"), ("東", "Han"), ("は", "Hiragana"), ("ア", "Katakana"),
    ("ｱ", "Katakana"), ("ー", "Katakana"), ("한", "Hangul"), ("я", "Cyrillic"), ("λ", "Greek"), ("ب", "Arabic"),
    ("1", None), (" ", None), ("!", None), ("😀", None), ("\ufffd", None)])
def test_script_of_characters(char, script):
    assert tm.script(char) == script


@pytest.mark.parametrize("token, script", [
    (" joy", "Latin"), ("かな", "Hiragana"), ("カナ", "Katakana"), ("漢字", "Han"), ("한글", "Hangul"),
    ("42!", None), (" нет", "Cyrillic"), ("大きさ", "Hiragana"), ("東京は", "Han"), ("aб", "Latin"),
    ("\ufffd", None), ("", None)])
def test_script_of_tokens(token, script):
    assert tm.token_script(token) == script  # the script of most letters; a tie goes to the first seen


def test_foreign_letters_and_tokens():
    assert tm.foreign_letters("Hello 世界!", "en") == (2, 7)
    assert tm.foreign_letters("東京はTokyo", "ja") == (5, 8)
    assert tm.foreign_letters("123 ...", "en") == (0, 0)
    assert tm.foreign_tokens(["Hello", " ", "世", "界", "!", "ok"], "en") == (2, 4)
    with pytest.raises(ValueError, match="no script list for language 'fr'"):
        tm.foreign_letters("bonjour", "fr")
    assert tm.share(1, 4) == 0.25 and math.isnan(tm.share(0, 0))


def test_token_pieces_give_split_characters_to_every_byte_token():
    tok = tiny_tokenizer(byte_level=True)  # one token per UTF-8 byte: 東 is three tokens

    def decode(ids):
        return tok.decode(ids)

    ids = tok("a東b", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5
    pieces = tm.token_pieces(ids, decode)
    assert pieces == ["a", "東", "東", "東", "b"]
    assert tm.foreign_tokens(pieces, "en") == (3, 5)
    assert tm.token_pieces(ids[:2], decode) == ["a", "\ufffd"]  # a character cut off by the length limit


def test_token_pieces_word_tokenizer():
    tok = tiny_tokenizer()
    ids = tok("the cat sat", add_special_tokens=False)["input_ids"]
    pieces = tm.token_pieces(ids, tok.decode)
    assert "".join(pieces) == tok.decode(ids) and len(pieces) == 3


def _regime(**overrides):
    metrics = dict(n_units=20, distinct2=0.95, repeat=2, compression=1.3, ppl_ratio=1.5, foreign=0.0, shift=0.0)
    return tm.regime(**{**metrics, **overrides})


def test_regime_thresholds_in_order():
    t = tm.Thresholds()
    assert _regime() == "inert"
    assert _regime(shift=t.margin + 0.01) == "surgical"
    assert _regime(shift=t.margin) == "inert"  # the rise must exceed the margin
    assert _regime(distinct2=t.distinct2 - 0.01) == "repetitive"
    assert _regime(repeat=t.repeat) == "repetitive"
    assert _regime(compression=t.compression + 0.1) == "repetitive"
    assert _regime(ppl_ratio=t.ppl_ratio + 0.1) == "explosive"
    assert _regime(foreign=t.foreign + 0.1) == "explosive"
    assert _regime(n_units=0, distinct2=math.nan, compression=math.nan, ppl_ratio=math.nan) == "explosive"
    # a collapsed loop is easy to predict (low perplexity) and may look shifted: it is still repetitive
    assert _regime(repeat=12, ppl_ratio=0.3, shift=0.5) == "repetitive"
    assert _regime(ppl_ratio=math.nan, shift=math.nan, foreign=math.nan) == "inert"
    assert tm.regime(n_units=20, distinct2=0.95, repeat=2, compression=1.3, ppl_ratio=1.5, foreign=0.0, shift=0.05,
                     thresholds=tm.Thresholds(margin=0.01)) == "surgical"
