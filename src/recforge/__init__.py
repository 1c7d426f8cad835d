"""recforge: from raw ratings and interaction logs to evaluated, explained and served recommendations."""

__version__ = "0.1.0"

from recforge.data import Interactions, Split, Vocabulary, load_dataset, make_split

__all__ = ["Interactions", "Split", "Vocabulary", "__version__", "load_dataset", "make_split"]
