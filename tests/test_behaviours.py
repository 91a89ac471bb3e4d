"""The behaviours table of the Elo study (emonn/corpus/behaviours.csv) and its validation."""

import polars as pl
import pytest

from emonn import EmonnError, corpus

CATEGORIES = ["Engaging", "Social", "Self-curiosity", "Helpful", "Neutral", "Misaligned", "Aversive", "Unsafe"]


def test_shipped_behaviours_are_eight_categories_of_eight():
    frame = corpus.behaviours()
    assert frame.columns == ["category", "activity"]
    assert frame["category"].unique(maintain_order=True).to_list() == CATEGORIES
    assert frame.group_by("category").len()["len"].to_list() == [8] * 8
    assert frame["activity"].n_unique() == 64


def valid() -> pl.DataFrame:
    return pl.DataFrame({"category": ["Good", "Good", "Bad", "Bad"],
                         "activity": ["help a friend", "water the plants", "tell a lie", "break a promise"]})


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop("activity"), "lacks column(s) activity"),
    (lambda f: f.with_columns(activity=pl.Series(["help a friend"] * 2 + ["tell a lie", "  "])), "row 4: empty activity"),
    (lambda f: f.with_columns(activity=pl.Series(["help a friend"] * 2 + ["tell a lie", "x"])),
     "'help a friend' appears more than once"),
    (lambda f: f.with_columns(activity=pl.Series(["help a\nfriend", "b c", "c d", "d e"])), "spans several lines"),
    (lambda f: f.with_columns(activity=pl.Series(["word " * 16, "b c", "c d", "d e"])), "has 16 words"),
    (lambda f: f.with_columns(category=pl.lit("Good")), "1 category (need at least 2)"),
    (lambda f: f.with_columns(category=pl.Series(["Good", "Good", "Good", "Bad"])), "'Bad' has 1 activity"),
])
def test_check_behaviours_names_the_problem(change, message):
    with pytest.raises(EmonnError, match="problem|lacks") as error:
        corpus.check_behaviours(change(valid()), "mine.csv")
    assert message in str(error.value) and "mine.csv" in str(error.value)


def test_check_behaviours_strips_and_keeps_a_valid_table():
    frame = valid().with_columns(activity=pl.col("activity") + " ")
    assert corpus.check_behaviours(frame, "mine.csv")["activity"].to_list() == valid()["activity"].to_list()
