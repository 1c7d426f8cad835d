"""`Vocabulary`: the two-way map between external ids (any hashable) and dense indices 0..n-1."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from recforge.errors import UnknownIdError


class Vocabulary:
    """An ordered set of external ids; position in the set is the dense index models use.

    Lookups are vectorised through a pandas hash index, so mapping millions of ids costs one call.
    A vocabulary is immutable: `extend` returns a new one whose existing indices are unchanged.
    """

    __slots__ = ("_index", "name")

    def __init__(self, ids: Iterable[Any], name: str = "id") -> None:
        index = pd.Index(list(ids) if not isinstance(ids, (np.ndarray, pd.Index, pd.Series)) else ids)
        if index.has_duplicates:
            dupes = index[index.duplicated()].unique()[:5].tolist()
            raise ValueError(f"{name} vocabulary has duplicate ids, e.g. {dupes}")
        if index.hasnans:
            raise ValueError(f"{name} vocabulary contains a missing id")
        self._index = index
        self.name = name

    @classmethod
    def encode(cls, values: Sequence[Any] | np.ndarray | pd.Series, name: str = "id") -> tuple[Vocabulary, np.ndarray]:
        """Build a vocabulary from raw (repeated) ids and return it with the int32 codes of `values`.

        Ids are sorted when they are mutually comparable (so MovieLens user 1 gets index 0), otherwise
        kept in order of first appearance.
        """
        try:
            codes, uniques = pd.factorize(pd.Series(values), sort=True)
        except TypeError:
            codes, uniques = pd.factorize(pd.Series(values), sort=False)
        if (codes < 0).any():
            raise ValueError(f"{name} column contains a missing id")
        return cls(uniques, name=name), codes.astype(np.int32)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, external_id: Any) -> bool:
        return external_id in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._index.equals(other._index)

    def __hash__(self) -> int:  # vocabularies are compared by content, used as dict keys rarely
        return hash((len(self), self.name))

    def __repr__(self) -> str:
        return f"Vocabulary({self.name!r}, n={len(self)})"

    @property
    def ids(self) -> np.ndarray:
        """External ids in index order."""
        return self._index.to_numpy()

    def index(self, external_ids: Iterable[Any] | Any, missing: Literal["raise", "ignore"] = "raise") -> np.ndarray:
        """Dense indices of `external_ids` (int64 array). Unknown ids raise, or give -1 with missing="ignore"."""
        scalar = np.isscalar(external_ids) or isinstance(external_ids, str)
        values = [external_ids] if scalar else external_ids
        values = values if isinstance(values, (np.ndarray, pd.Index, pd.Series, list)) else list(values)
        positions = self._index.get_indexer(values)
        if missing == "raise" and (positions < 0).any():
            unknown = [v for v, p in zip(values, positions, strict=False) if p < 0][:5]
            raise UnknownIdError(f"unknown {self.name} id(s): {unknown}{self._kind_hint(unknown)}")
        return positions.astype(np.int64)

    def _kind_hint(self, unknown: list[Any]) -> str:
        """' (this vocabulary's ids are integers)' when text was looked up in an integer vocabulary, or the
        reverse: "1" and 1 are different ids."""
        integer = self._index.dtype.kind in "iu"
        if integer and any(isinstance(v, str) for v in unknown):
            return f" ({self.name} ids are integers here, not text)"
        if not integer and len(self._index) and any(isinstance(v, (int, np.integer)) for v in unknown):
            return f" ({self.name} ids are text here, e.g. {str(self._index[0])!r})"
        return ""

    def position(self, external_id: Any) -> int | None:
        """Dense index of one external id, or None when unknown (a hash lookup, ~100x cheaper than
        `index` for a single id)."""
        try:
            return int(self._index.get_loc(external_id))
        except (KeyError, TypeError):
            return None

    def id(self, index: int) -> Any:
        """External id at a dense index, as a plain Python value."""
        value = self._index[int(index)]
        return value.item() if isinstance(value, np.generic) else value

    def lookup(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """External ids of many dense indices."""
        return self._index.to_numpy()[np.asarray(indices, dtype=np.int64)]

    def extend(self, new_ids: Iterable[Any]) -> Vocabulary:
        """A vocabulary with `new_ids` appended (those already present are skipped)."""
        additions = pd.Index(list(new_ids)).unique()
        additions = additions[~additions.isin(self._index)]
        return Vocabulary(self._index.append(additions), name=self.name)

    def to_list(self) -> list[Any]:
        """JSON-friendly list of ids (numpy scalars become Python ints/strs)."""
        return [v.item() if isinstance(v, np.generic) else v for v in self._index.tolist()]
