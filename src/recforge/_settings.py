"""What settings a config schema knows at a path: the one walk behind every "not a known setting (did
you mean ...)" hint, for experiment configs and model parameters alike."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel


def _literal(kind: Any) -> tuple[Any, ...]:
    return typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else ()


def settings_at(schema: Any, path: tuple[Any, ...]) -> list[str] | None:
    """The settings of the section a config path leads to (`preprocess.0.filter_user_counts` -> the step's
    fields), walking field annotations, list items and union tags; None where the walk cannot follow."""

    def concrete(kind: Any) -> list[Any]:
        origin = typing.get_origin(kind)
        if origin is typing.Annotated:
            return concrete(typing.get_args(kind)[0])
        if origin in (typing.Union, types.UnionType):
            return [c for arg in typing.get_args(kind) for c in concrete(arg)]
        return [kind]

    kinds = [schema]
    for part in path:
        models = [k for kind in kinds for k in concrete(kind) if isinstance(k, type) and issubclass(k, BaseModel)]
        tagged = [m for m in models if any(part in _literal(f.annotation) for f in m.model_fields.values())]
        if isinstance(part, int):
            kinds = [typing.get_args(k)[0] for kind in kinds for k in concrete(kind) if typing.get_origin(k) is list]
        elif tagged:  # a union's tag (a preprocessing step's or a split's kind), before a field of that name
            kinds = tagged
        else:
            kinds = [m.model_fields[part].annotation for m in models if part in m.model_fields]
        if not kinds:
            return None
    models = [k for kind in kinds for k in concrete(kind) if isinstance(k, type) and issubclass(k, BaseModel)]
    return sorted({name for m in models for name in m.model_fields}) or None
