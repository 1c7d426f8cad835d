"""Data layer: `Interactions`, vocabularies, loaders, preprocessing, features and splits."""

from recforge.data.interactions import Interactions, Sequences
from recforge.data.loaders import DATASETS, load_dataset
from recforge.data.splits import Split, make_split
from recforge.data.vocabulary import Vocabulary

__all__ = ["DATASETS", "Interactions", "Sequences", "Split", "Vocabulary", "load_dataset", "make_split"]
