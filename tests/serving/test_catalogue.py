"""How typed text finds catalogue titles (`recforge.serving.catalogue`): properties over any titles."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import example, given, settings
from hypothesis import strategies as st

from recforge.serving.catalogue import Catalogue, folded

_TITLE = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=30)


class _Model:
    def __init__(self, n: int) -> None:
        self.items_ = type("Items", (), {"ids": np.arange(n)})()


def _catalogue(titles: list[str]) -> Catalogue:
    items = pd.DataFrame({"item_id": np.arange(len(titles)), "title": titles})
    return Catalogue.build(_Model(len(titles)), items)


@settings(max_examples=200, deadline=None)
@given(titles=st.lists(_TITLE, min_size=1, max_size=8), pick=st.integers(0, 7))
def test_a_title_is_found_as_written_and_as_folded(titles, pick):
    """Typed exactly (any case), a title is a strict match; typed without its accents and punctuation it is
    among the loose matches; and what a strict or loose reading finds also contains the text."""
    catalogue, index = _catalogue(titles), pick % len(titles)
    strict, loose, containing = catalogue.title_matches(titles[index].lower())
    assert strict[index] and containing[index]
    plain = folded(pd.Series([titles[index].lower()])).iloc[0]
    if plain:
        strict, loose, containing = catalogue.title_matches(plain)
        assert (strict | loose)[index] and containing[index]


def test_folding_drops_accents_and_punctuation_and_keeps_other_scripts():
    titles = pd.Series(["Misérables, Les (1995)", "Steins;Gate", "WALL·E (2008)", "君の名は。", "K-On!!", "Ōkami"])
    assert folded(titles).tolist() == ["miserables les 1995", "steins gate", "wall e 2008", "君の名は", "k on", "okami"]


def test_the_closest_titles_to_a_misspelling_come_best_first_and_far_ones_not_at_all():
    catalogue = _catalogue(["Naruto: Shippuuden", "Toushinden", "Fullmetal Alchemist (2003)", "Matrix, The (1999)"])
    assert catalogue.closest("naruto shippuden").tolist() == [0]  # Toushinden is 0.6 alike, far behind
    assert catalogue.closest("fulmetal alchemist").tolist() == [2]  # the year is not typed
    assert catalogue.closest("the matrx").tolist() == [3]  # nor the catalogue's article order
    assert catalogue.closest("xqzzy").tolist() == [] and catalogue.closest("!!").tolist() == []


@settings(max_examples=100, deadline=None)
@given(titles=st.lists(_TITLE, min_size=1, max_size=8), pick=st.integers(0, 7), limit=st.integers(1, 5))
def test_a_title_typed_as_folded_is_among_its_closest(titles, pick, limit):
    catalogue, index = _catalogue(titles), pick % len(titles)
    typed = folded(pd.Series([titles[index]])).iloc[0]
    near = catalogue.closest(typed, limit=limit)
    assert len(near) <= limit and len(set(near.tolist())) == len(near)
    spoken = catalogue._folded[2][index]  # the title as typed: no year, article in front, folded
    if spoken and typed == spoken:  # an exact match is the best there is: listed unless equal titles fill it
        assert index in near or len(near) == limit


def _closest_by_every_ratio(catalogue: Catalogue, query: str, limit: int, cutoff: float) -> list[int]:
    """The definition, title by title: difflib's ratio of the folded query to every typed title."""
    import difflib

    plain = folded(pd.Series([query])).iloc[0]
    if not plain:
        return []
    ratios = [difflib.SequenceMatcher(None, title, plain, autojunk=False).ratio() for title in catalogue._folded[2]]
    scored = sorted((-ratio, index) for index, ratio in enumerate(ratios) if ratio >= cutoff)
    return [index for negative, index in scored[:limit] if -negative >= -scored[0][0] - 0.15]


@settings(max_examples=300, deadline=None)
@given(
    titles=st.lists(st.text("abcde :éÉ'-", min_size=0, max_size=12), min_size=1, max_size=12),
    query=st.text("abcde :éÉ'-", min_size=1, max_size=12),
    cutoff=st.sampled_from([0.3, 0.6, 0.8]),
    limit=st.integers(1, 5),
)
@example(titles=["ab", "ba", "abd"], query="abc", cutoff=0.8, limit=5)  # ratios exactly at the cutoff are kept
@example(titles=["abx", "cab"], query="abc", cutoff=0.3, limit=1)  # both 2/3 (cab's bound is 1): the first wins
def test_the_character_count_bound_skips_only_titles_that_cannot_reach_the_cutoff(titles, query, cutoff, limit):
    """`closest` computes difflib's ratio only where the character counts allow it to reach the cutoff and
    beat the answer so far; what it answers is what computing every ratio answers (a small alphabet: many
    near and equal titles, so ties at the limit and the cutoff)."""
    catalogue = _catalogue(titles)
    assert catalogue.closest(query, limit=limit, cutoff=cutoff).tolist() == _closest_by_every_ratio(
        catalogue, query, limit, cutoff
    )
