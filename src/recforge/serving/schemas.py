"""Request and response bodies of the HTTP service, strict: booleans are not numbers, strings are not
numbers, numbers are finite, lists and strings are bounded, unknown fields are refused. Ids are an
integer or a string here; the service then requires the model vocabulary's own type."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

MAX_K = 1000  # the longest list a request may ask for
MAX_ID_LENGTH = 256

Id = Annotated[
    StrictInt | Annotated[StrictStr, Field(max_length=MAX_ID_LENGTH)], Field(description="an item or user id")
]
Rating = Annotated[float, Field(strict=True, allow_inf_nan=False)]
FeatureValue = StrictStr | StrictInt | Annotated[float, Field(strict=True, allow_inf_nan=False)] | None
K = Annotated[int, Field(strict=True, ge=1, le=MAX_K)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RatedItem(_Strict):
    item: Id
    rating: Rating | None = Field(None, description="omit for an interaction without a rating")


class NewUserRequest(_Strict):
    items: list[RatedItem] = Field(default_factory=list, max_length=10_000)
    features: dict[Annotated[str, Field(max_length=100)], FeatureValue] | None = Field(
        None, max_length=100, description="user features (e.g. age, gender) for models with a user-feature tower"
    )
    k: K = 10


class InteractionsRequest(_Strict):
    items: list[RatedItem] = Field(min_length=1, max_length=10_000)


class NewItem(BaseModel):
    """A new item: its id, an optional title, and the model's item-feature columns (genres, year, ...)."""

    model_config = ConfigDict(extra="allow")
    item: Id
    title: Annotated[StrictStr, Field(max_length=1000)] | None = None


class NewItemsRequest(_Strict):
    items: list[NewItem] = Field(min_length=1, max_length=1_000)


class Pair(_Strict):
    user: Id
    item: Id


class PredictRequest(_Strict):
    pairs: list[Pair] = Field(min_length=1, max_length=10_000)


class PromoteRequest(_Strict):
    path: Annotated[StrictStr, Field(min_length=1, max_length=4096)]


# ----------------------------------------------------------------------------- answers
class ItemRow(BaseModel):
    item: int | str
    title: str | None
    genres: list[str]
    score: float | None = None


class Answer(BaseModel):
    served_by: str
    note: str
    items: list[ItemRow]


class UserAnswer(Answer):
    user: str


class SimilarAnswer(Answer):
    item: str


class WriteAnswer(BaseModel):
    seq: int = Field(description="the event's sequence number in the store (committed before this answer)")


class InteractionsAnswer(WriteAnswer):
    user: str
    added: int
    updated_by: str


class ItemsAnswer(WriteAnswer):
    added: list[int | str]
    embedded_by: str


class Prediction(BaseModel):
    user: int | str
    item: int | str
    rating: float


class PredictAnswer(BaseModel):
    predictions: list[Prediction]


class SearchAnswer(BaseModel):
    query: str
    items: list[ItemRow]


class Health(BaseModel):
    status: str
    model: str
    recforge: str
    n_users: int
    n_items: int
    capabilities: list[str]
    ann: bool
    events_applied: int
    artifact: str | None
    swaps: int
    worker: int = Field(description="the process id of the worker that answered")


class Error(BaseModel):
    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "no bearer token (writes, and reads when configured)"},
    403: {"model": Error, "description": "a wrong token, or writes are disabled (no token configured)"},
    404: {"model": Error, "description": "an unknown user or item id"},
    409: {"model": Error, "description": "the model cannot do this, or the item id is already taken"},
    413: {"model": Error, "description": "the request body is over the size limit"},
    422: {"model": Error, "description": "a malformed parameter or body; the detail names the field"},
    503: {"model": Error, "description": "the event store is unavailable: nothing was written"},
}
