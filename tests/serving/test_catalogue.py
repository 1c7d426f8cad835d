"""How typed text finds catalogue titles (`recforge.serving.catalogue`): properties over any titles."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
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
