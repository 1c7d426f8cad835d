"""Request and response bodies of the HTTP service, strict: booleans are not numbers, strings are not
numbers, numbers are finite, lists and strings are bounded, unknown fields are refused. Request models are
built per app (`request_models`) with the model vocabulary's id type, so the OpenAPI schema says exactly
which ids are accepted: integers for integer vocabularies, strings otherwise.

(No `from __future__ import annotations` here: the models are built inside a function and pydantic must
see their annotations as objects.)"""

import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, create_model

MAX_K = 1000  # the longest list a request may ask for
MAX_ID_LENGTH = 256
# Integer ids have at most 15 digits: every such number survives a JavaScript client's JSON.parse (2**53)
# and JSON Schema generators' float arithmetic; a dataset with longer numeric ids loads them as strings.
MAX_INTEGER_ID = 10**15 - 1
INTEGER_PATTERN = r"^-?[0-9]{1,15}$"  # ASCII digits only ('١' and '²' are not ids)


def _integral(value: Any) -> Any:
    """A JSON integer: an int, or a number with no fractional part (JSON Schema's "integer": 281.0 is 281);
    never a boolean or a string."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be an integer number (not a string or a boolean)")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


Text = Annotated[StrictStr, Field(max_length=MAX_ID_LENGTH)]
IntegerId = Annotated[int, Field(ge=-MAX_INTEGER_ID, le=MAX_INTEGER_ID), BeforeValidator(_integral)]
K = Annotated[int, Field(ge=1, le=MAX_K), BeforeValidator(_integral)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromoteRequest(_Strict):
    path: Annotated[StrictStr, Field(min_length=1, max_length=4096)]


@dataclass(frozen=True)
class RequestModels:
    RatedItem: type[BaseModel]
    NewUserRequest: type[BaseModel]
    InteractionsRequest: type[BaseModel]
    NewItem: type[BaseModel]
    NewItemsRequest: type[BaseModel]
    Pair: type[BaseModel]
    PredictRequest: type[BaseModel]
    NewUserPredictRequest: type[BaseModel]


def request_models(
    integer_users: bool,
    integer_items: bool,
    rating_scale: tuple[float, float] | None = None,
    user_features: dict[str, str] | None = None,
    item_features: dict[str, str] | None = None,
) -> RequestModels:
    """The request bodies for one model: user / item ids as integers or strings, ratings inside its scale,
    and its user and item feature columns by name and kind ("numeric", "categorical", "list")."""
    UserId = IntegerId if integer_users else Text
    ItemId = IntegerId if integer_items else Text
    scale = {} if rating_scale is None else {"ge": float(rating_scale[0]), "le": float(rating_scale[1])}
    RatingValue = Annotated[float, Field(strict=True, allow_inf_nan=False, **scale)]
    # a model without a user-feature tower takes any well-formed features and says it ignored them
    UserFeatures: Any = (
        _features_model("UserFeatures", user_features)
        if user_features
        else Annotated[dict[Annotated[str, Field(max_length=200)], AnyFeature | None], Field(max_length=100)]
    )

    class RatedItem(_Strict):
        item: ItemId
        rating: RatingValue | None = Field(None, description="omit for an interaction without a rating")

    class NewUserRequest(_Strict):
        items: list[RatedItem] = Field(default_factory=list, max_length=10_000)
        features: UserFeatures | None = Field(
            None, description="user features (e.g. age, gender) for models with a user-feature tower"
        )
        k: K = 10
        explain: bool = Field(False, description="say which of the items given led to each recommendation")
        genres: list[Annotated[StrictStr, Field(max_length=200)]] = Field(
            default_factory=list, max_length=100, description="only items of any of these genres"
        )
        exclude_items: list[ItemId] = Field(
            default_factory=list, max_length=10_000, description="items never to recommend (e.g. out of stock)"
        )

    class InteractionsRequest(_Strict):
        items: list[RatedItem] = Field(min_length=1, max_length=10_000)

    item_fields = {name: (_FEATURE_TYPES[kind] | None, None) for name, kind in (item_features or {}).items()}
    NewItem = create_model(
        "NewItem",
        __base__=_Strict,
        __doc__="A new item: its id, an optional title, and the item-tower features (a missing one is unknown).",
        item=(ItemId, ...),
        title=(Annotated[StrictStr, Field(max_length=1000)] | None, None),
        **item_fields,
    )

    class NewItemsRequest(_Strict):
        items: list[NewItem] = Field(min_length=1, max_length=1_000)  # type: ignore[valid-type]

    class Pair(_Strict):
        user: UserId
        item: ItemId

    class PredictRequest(_Strict):
        pairs: list[Pair] = Field(min_length=1, max_length=10_000)

    class NewUserPredictRequest(_Strict):
        items: list[RatedItem] = Field(
            default_factory=list, max_length=10_000, description="the items the user rated (or had), in time order"
        )
        features: UserFeatures | None = Field(
            None, description="user features (e.g. age, gender) for models with a user-feature tower"
        )
        predict: list[ItemId] = Field(min_length=1, max_length=10_000, description="items to predict ratings of")

    return RequestModels(
        RatedItem, NewUserRequest, InteractionsRequest, NewItem, NewItemsRequest, Pair, PredictRequest,
        NewUserPredictRequest,
    )  # fmt: skip


Category = Annotated[StrictStr, Field(max_length=200)] | IntegerId
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Genres = Annotated[list[Annotated[StrictStr, Field(max_length=200)]], Field(max_length=100)]
AnyFeature = Category | Number | Genres
_FEATURE_TYPES: dict[str, Any] = {"numeric": Number, "categorical": Category, "list": Genres}


def _features_model(name: str, kinds: dict[str, str]) -> type[BaseModel]:
    """A strict model with one optional field per feature (None or absent: unknown)."""
    fields = {feature: (_FEATURE_TYPES[kind] | None, None) for feature, kind in kinds.items()}
    return create_model(name, __base__=_Strict, **fields)


# ----------------------------------------------------------------------------- answers
class Because(BaseModel):
    item: int | str
    title: str | None
    weight: float = Field(description="how much the recommended item's score falls without this item")


class ItemRow(BaseModel):
    item: int | str
    title: str | None
    genres: list[str]
    score: float | None = None


class RecommendedItem(ItemRow):
    because: list[Because] | None = Field(None, description="with explain=true: the user's items behind it")


class Answer(BaseModel):
    served_by: str
    note: str
    items: list[ItemRow]


class Recommended(Answer):
    """A list of recommendations; `because` appears on its items only when explanations were asked for."""

    items: list[RecommendedItem]


class UserAnswer(Recommended):
    user: str


class SimilarAnswer(Answer):
    item: str


class WriteAnswer(BaseModel):
    seq: int = Field(description="the event's sequence number in the store (committed before this answer)")
    applied: bool = Field(
        True,
        description="false (status 202): committed, but this worker could not read the store to apply it; it is "
        "applied as soon as it can, and reads here may not show it until then",
    )
    replayed: bool = Field(
        False,
        description="true: a retry of a write committed before under the same Idempotency-Key; nothing new was "
        "written, and `seq` is that write's event",
    )


class InteractionsAnswer(WriteAnswer):
    user: str
    added: int
    updated_by: str


class ItemsAnswer(WriteAnswer):
    added: list[int | str]
    embedded_by: str
    note: str = Field("", description="feature values the item tower read as unknown, if any")


class Prediction(BaseModel):
    user: int | str
    item: int | str
    rating: float


class PredictAnswer(BaseModel):
    predictions: list[Prediction]


class ItemPrediction(BaseModel):
    item: int | str
    rating: float


class NewUserPredictAnswer(BaseModel):
    served_by: str = Field(description="history, features, features+history, or cold start (nothing usable given)")
    note: str
    predictions: list[ItemPrediction]


class SearchAnswer(BaseModel):
    query: str
    items: list[ItemRow]
    closest: bool = Field(
        False, description="no title contains the query: `items` are the titles nearest it (a misspelling)"
    )


class GenreCount(BaseModel):
    genre: str
    items: int


class GenresAnswer(BaseModel):
    genres: list[GenreCount]


class Health(BaseModel):
    status: str = Field(description='"ok", or "degraded" while the event store cannot be read')
    store: str = Field(description='"ok", or "unavailable: <reason>" (reads and writes answer 503 meanwhile)')
    model: str
    recforge: str
    n_users: int
    n_items: int
    new_users: int = Field(description="users the model was not trained with, known from their writes since")
    capabilities: list[str]
    rating_scale: list[float] | None = Field(
        None,
        description="the lowest and highest rating of the model's training data; null when it had no scale "
        "(interactions without ratings): the web page then adds items without a rating",
    )
    ann: bool
    events_applied: int = Field(description="the sequence number of the last event this worker applied")
    events_applied_total: int = Field(description="how many events this worker applied since it started")
    artifact: str | None
    swaps: int
    swap_error: str | None = Field(None, description="why the last promoted model could not be served")
    worker: int = Field(description="the process id of the worker that answered")


class Ready(BaseModel):
    ready: bool
    events_applied: int
    stale_seconds: float | None = None  # reads answered from a state unconfirmed this long (store down)


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
