"""recforge: from raw ratings and interaction logs to evaluated, explained and served recommendations."""

from recforge._version import __version__
from recforge.threads import quiet_openmp_spinning

quiet_openmp_spinning()  # before anything imports torch: see recforge.threads

from recforge.data import Interactions, Split, Vocabulary, load_dataset, make_split  # noqa: E402


def load(path: str) -> object:
    """Load a saved model artifact directory (checksums and version verified); see `recforge.artifacts`."""
    from recforge.models import load_model

    return load_model(path)


__all__ = ["Interactions", "Split", "Vocabulary", "__version__", "load", "load_dataset", "make_split"]
