"""A sequential model behind the service: what a user writes is their sequence, in the order written, so
two writes answer as one write of the same items, an anonymous query of them and the model itself do; the
same items in another order are another sequence. (The service's other tests serve factor, item-item and
feature models; a sequence model had never been served in a test.)"""

from __future__ import annotations

import numpy as np
import pytest

from recforge.data.query import Query
from recforge.models import create_model
from tests.serving.test_api import _artifact, serve

pytestmark = pytest.mark.xdist_group("serving")
SEQUENCE = [50, 181, 1]  # Star Wars, Return of the Jedi, Toy Story


@pytest.fixture(scope="module")
def sasrec(ml100k, tmp_path_factory):
    model = create_model("sasrec", n_epochs=2).fit(ml100k)
    return model, _artifact(model, ml100k, tmp_path_factory.mktemp("sequences") / "sasrec")


def _listed(answer) -> list[int]:
    assert answer.status_code == 200, answer.text
    return [row["item"] for row in answer.json()["items"]]


def test_writes_extend_a_sequence_in_order_and_answer_as_the_model_does(sasrec):
    model, path = sasrec
    client = serve(path)
    write = lambda user, items: client.post(  # noqa: E731
        f"/users/{user}/interactions", json={"items": [{"item": item} for item in items]}
    )
    assert write(90001, SEQUENCE).status_code == 200
    assert write(90002, SEQUENCE[:2]).status_code == 200 and write(90002, SEQUENCE[2:]).status_code == 200
    assert write(90003, SEQUENCE[::-1]).status_code == 200
    once, twice, reversed_ = (
        _listed(client.get(f"/users/{u}/recommendations", params={"k": 10})) for u in (90001, 90002, 90003)
    )
    anonymous = _listed(client.post("/recommendations", json={"items": [{"item": i} for i in SEQUENCE], "k": 10}))
    assert once == twice == anonymous and once != reversed_

    positions = [model.items_.position(item) for item in SEQUENCE]
    scores = model.score(Query.from_items([positions], model.n_items))[0]
    scores[positions] = -np.inf  # what the user has is not recommended back
    expected = [model.items_.ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
    assert once == [int(i) for i in expected]
