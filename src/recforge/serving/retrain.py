"""`recforge retrain`: close the loop from the service's event log back to a served model.

1. The serving model is the newest promoted artifact in the store (else the one given). Its cut-off `C`
   is the last event it was trained with.
2. The interaction events after `C` are split by time: the most recent `holdout` fraction of their rows
   is the hold-out; the rest, up to sequence number `S`, is training data.
3. The candidate is the training config's model fitted on the original dataset plus every event up to `S`
   (the config's preprocessing runs on the combined data).
4. Both models answer the hold-out users exactly as the service would have at `S`: the serving model with
   the events between `C` and `S` applied as live updates (fold-ins, overlays, added items), the candidate
   from its training; seen items excluded, each through its own vector index when it has one. A hold-out
   pair the user already had before `S` is dropped (neither model may recommend it).
5. Promote when the candidate's mean NDCG@k is not below the serving model's by more than `tolerance`
   (a paired Wilcoxon test over users is reported alongside, not used to decide). A promoted candidate is
   refitted on every event (unless refit=False), written with `event_cutoff` in its metadata, and
   committed as a `model` event: every worker swaps to it in the background and replays newer events.

Nothing here reads a model's internals: only the service's own read path and the metrics module.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge._io import atomic_path
from recforge.artifacts import check_artifact_output
from recforge.data.catalogue import item_metadata
from recforge.data.interactions import Interactions
from recforge.data.preprocess import preprocess
from recforge.errors import ConfigError, RecforgeError
from recforge.evaluation import metrics as M
from recforge.evaluation.stats import paired_test
from recforge.serving.engine import Engine, Snapshot, check_same_interface
from recforge.serving.store import Event, EventStore, redacted
from recforge.train import TrainConfig, check_servable, fit_model, load_raw_dataset, save_served

MIN_HOLDOUT_USERS = 10  # fewer users than this cannot tell two models apart; nothing is promoted


@dataclass(frozen=True)
class Holdout:
    """The hold-out: each user's items from the interaction events after sequence number `upto`."""

    upto: int  # the last event of the training part
    relevant: dict[Any, set[Any]]  # external user id -> external item ids
    n_events: int
    n_pairs: int
    dropped_repeats: int


def retrain(
    config: TrainConfig,
    store: EventStore,
    output: str | Path,
    *,
    serving: str | Path | None = None,
    holdout: float = 0.1,
    k: int = 10,
    tolerance: float = 0.0,
    refit: bool = True,
    promote: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Train a candidate on the original data plus the event log, compare it with the serving model on the
    most recent events, and promote it if it is not worse; returns the report (also written as JSON and
    Markdown beside `output`)."""
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout must be a fraction between 0 and 1, got {holdout}")
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0, got {tolerance}")
    started = time.perf_counter()
    output = Path(output).resolve()
    check_artifact_output(output)  # before any fit
    check_servable(config)
    promoted_event = store.latest_model()
    serving_path = promoted_event.payload["path"] if promoted_event is not None else serving
    if serving_path is None:
        raise ConfigError("no model has been promoted in this store: pass the serving artifact (--serving)")
    serving_snapshot = Snapshot.load(serving_path)
    latest = store.committed_seq()
    events = store.events_after(0, latest, kinds=("interactions", "items"))
    report: dict[str, Any] = {
        "serving": {"artifact": str(serving_path), "event_cutoff": serving_snapshot.cutoff},
        "store": redacted(store.url),
        "latest_event": latest,
        "k": k,
        "metric": f"ndcg@{k}",
        "tolerance": tolerance,
        "holdout_fraction": holdout,
    }
    raw = load_raw_dataset(config)
    split = _holdout(events, serving_snapshot.cutoff, holdout, raw)
    if split is None:
        return _finish(report, output, "refused", "no interaction events since the serving model's cut-off", started)
    report["events"] = {
        "after_cutoff_until": split.upto,
        "holdout_events": split.n_events,
        "holdout_users": len(split.relevant),
        "holdout_pairs": split.n_pairs,
        "dropped_repeats": split.dropped_repeats,
        # a rating written to a model whose data has none cannot join the training data: said, not dropped silently
        "ratings_not_used": 0 if raw.rating is not None else _ratings_in(events),
    }
    if len(split.relevant) < MIN_HOLDOUT_USERS:
        n = len(split.relevant)
        reason = (
            f"only {n} user{'s' * (n != 1)} in the hold-out (at least {MIN_HOLDOUT_USERS} are needed to tell two "
            "models apart): wait for more writes, or hold out a larger share of them with --holdout"
        )
        return _finish(report, output, "refused", reason, started)

    fit_started = time.perf_counter()
    train_data, _ = preprocess(with_events(raw, events, split.upto), config.preprocess)
    candidate = fit_model(config, train_data, progress)
    report["candidate"] = {"model": candidate.name, "trained_on": len(train_data), "event_cutoff": split.upto}
    report["fit_seconds"] = time.perf_counter() - fit_started

    serving_engine = Engine(serving_snapshot, store, horizon=split.upto)
    candidate_engine = Engine(_snapshot(config, candidate, train_data, split.upto), store, horizon=split.upto)
    users = list(split.relevant)
    scores = {
        name: _evaluate(engine, users, split.relevant, k)
        for name, engine in (("serving", serving_engine), ("candidate", candidate_engine))
    }
    for name, per_user in scores.items():
        report[f"{name}_metrics"] = {metric: float(np.mean(values)) for metric, values in per_user.items()}
    test = paired_test(scores["candidate"]["ndcg"], scores["serving"]["ndcg"])
    report["paired_test"] = {"method": test.method, "n_users": test.n, "p_value": test.p_value}
    gap = report["candidate_metrics"]["ndcg"] - report["serving_metrics"]["ndcg"]
    report["ndcg_difference"] = gap
    if gap < -tolerance:
        reason = f"the candidate's NDCG@{k} is {-gap:.4f} below the serving model's (tolerance {tolerance})"
        _write_candidate(config, candidate, train_data, output, split.upto, report)
        return _finish(report, output, "refused", reason, started)

    final, final_data, cutoff = candidate, train_data, split.upto
    if refit:  # the hold-out served its purpose; the promoted model learns from every event
        final_data, _ = preprocess(with_events(raw, events, latest), config.preprocess)
        final, cutoff = fit_model(config, final_data, progress), latest
    try:
        check_same_interface(serving_snapshot.model, final)
    except ConfigError as exc:
        _write_candidate(config, final, final_data, output, cutoff, report)
        return _finish(report, output, "refused", str(exc), started)
    _write_candidate(config, final, final_data, output, cutoff, report)
    reason = f"the candidate's NDCG@{k} is {gap:+.4f} against the serving model's (tolerance {tolerance})"
    if not promote:
        return _finish(report, output, "not promoted (--no-promote)", reason, started)
    Snapshot.load(output)  # it must load before any worker is told to swap to it
    report["model_event"] = store.append("model", {"path": str(output), "cutoff": cutoff})
    return _finish(report, output, "promoted", reason, started)


# ----------------------------------------------------------------------------- the data
def with_events(raw: Interactions, events: list[Event], upto: int) -> Interactions:
    """The original dataset plus the interaction events up to `upto` (their time is the event's commit
    time) and the items added through the service (their features join the item table)."""
    added = event_rows(events, raw)
    added = added[added["seq"] <= upto].drop(columns="seq")
    if raw.rating is None:
        added = added.drop(columns="rating")
    if raw.timestamp is None:
        added = added.drop(columns="timestamp")
    frame = pd.concat([raw.to_frame(), added], ignore_index=True)
    item_features = raw.item_features
    if item_features is not None:
        item_features = item_features.set_index(pd.Index(raw.items.ids))
        new_items = [entry for e in events if e.kind == "items" and e.seq <= upto for entry in e.payload["items"]]
        if new_items:
            rows = pd.DataFrame(new_items)
            rows.index = pd.Index(_as_ids(rows.pop("item").tolist(), raw.items.ids.dtype))
            item_features = pd.concat([item_features, rows])
            item_features = item_features[~item_features.index.duplicated(keep="first")]
    user_features = None if raw.user_features is None else raw.user_features.set_index(pd.Index(raw.users.ids))
    return Interactions.from_frame(
        frame,
        rating="rating" if raw.rating is not None else None,
        timestamp="timestamp" if raw.timestamp is not None else None,
        rating_scale=raw.rating_scale,
        item_features=item_features,
        user_features=user_features,
        name=raw.name,
        source={**raw.source, "events_upto": upto},
    )


def _ratings_in(events: list[Event]) -> int:
    """How many ratings the interaction events carry (None: an item written without one)."""
    return sum(r is not None for e in events if e.kind == "interactions" for r in e.payload["ratings"])


def event_rows(events: list[Event], raw: Interactions) -> pd.DataFrame:
    """One row per interaction of the `interactions` events: seq, user_id, item_id, rating (NaN when the
    event had none) and timestamp (the commit time), ids in the dataset's id type."""
    chosen = [e for e in events if e.kind == "interactions"]
    counts = [len(e.payload["items"]) for e in chosen]
    ratings = [r for e in chosen for r in e.payload["ratings"]]
    return pd.DataFrame(
        {
            "seq": np.repeat(np.array([e.seq for e in chosen], dtype=np.int64), counts),
            "user_id": np.repeat(_as_ids([e.payload["user"] for e in chosen], raw.users.ids.dtype), counts),
            "item_id": _as_ids([i for e in chosen for i in e.payload["items"]], raw.items.ids.dtype),
            "rating": np.array([np.nan if r is None else r for r in ratings], dtype=np.float32),
            "timestamp": np.repeat(np.array([int(e.created) for e in chosen], dtype=np.int64), counts),
        }
    )


def _as_ids(values: list[Any], dtype: np.dtype) -> np.ndarray:
    return np.array(values, dtype=dtype if dtype.kind in "iu" else object)


def _holdout(events: list[Event], cutoff: int, fraction: float, raw: Interactions) -> Holdout | None:
    """The most recent `fraction` of the interaction rows after `cutoff`, split at an event boundary; a
    held-out pair the user already had (in the dataset or an earlier event) is dropped."""
    rows = event_rows(events, raw)
    recent = rows[rows["seq"] > cutoff]
    if recent.empty:
        return None
    seqs = recent["seq"].unique()  # ascending: events come in sequence order
    if len(seqs) == 1:
        upto = cutoff  # one event: the whole of it is the hold-out
    else:
        rows_to = np.cumsum(recent.groupby("seq", sort=True).size().to_numpy())
        last_train = int(np.searchsorted(rows_to, (1 - fraction) * rows_to[-1], side="left"))
        upto = int(seqs[min(last_train, len(seqs) - 2)])
    held = rows[rows["seq"] > upto]
    earlier = pd.concat([raw.to_frame()[["user_id", "item_id"]], rows.loc[rows["seq"] <= upto, ["user_id", "item_id"]]])
    marked = held[["user_id", "item_id"]].merge(earlier.drop_duplicates(), how="left", indicator=True)
    fresh = marked.loc[marked["_merge"] == "left_only", ["user_id", "item_id"]].drop_duplicates()
    relevant = {_plain(user): set(map(_plain, items)) for user, items in fresh.groupby("user_id")["item_id"]}
    return Holdout(upto, relevant, int(held["seq"].nunique()), len(fresh), int((marked["_merge"] == "both").sum()))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------- the comparison
def _snapshot(config: TrainConfig, model: Any, data: Interactions, cutoff: int) -> Snapshot:
    from recforge.models.indexed import IndexedRecommender

    served = model if config.index is None else IndexedRecommender.build(model, config.index)
    return Snapshot.of(served, item_metadata(data), cutoff=cutoff)


def _evaluate(engine: Engine, users: list[Any], relevant: dict[Any, set[Any]], k: int) -> dict[str, np.ndarray]:
    """Per-user NDCG / recall / hit rate @k of what the service over `engine` answers each user."""
    from recforge.serving.service import RecommenderService

    service = RecommenderService(engine=engine)
    hits = np.zeros((len(users), k))
    for row, user in enumerate(users):
        try:
            answer = service.recommend_user(str(user), k)
        except RecforgeError:  # a user this model cannot answer scores zero, as they would get nothing
            continue
        items = [entry["item"] for entry in answer["items"]]
        hits[row, : len(items)] = [item in relevant[user] for item in items]
    n_relevant = np.array([len(relevant[user]) for user in users])
    ideal = (np.arange(k)[None, :] < n_relevant[:, None]).astype(np.float64)
    return {
        "ndcg": M.ndcg_at_k(hits, ideal, k),
        "recall": M.recall_at_k(hits, n_relevant, k),
        "hit_rate": M.hit_rate_at_k(hits, k),
    }


# ----------------------------------------------------------------------------- the outcome
def _write_candidate(
    config: TrainConfig, model: Any, data: Interactions, output: Path, cutoff: int, report: dict[str, Any]
) -> None:
    summary = {key: report[key] for key in ("serving", "candidate", "events") if key in report}
    save_served(config, model, data, output, metadata={"event_cutoff": cutoff, "retrain": summary})
    report["artifact"] = {"path": str(output), "event_cutoff": cutoff}


def _finish(report: dict[str, Any], output: Path, decision: str, reason: str, started: float) -> dict[str, Any]:
    report |= {"decision": decision, "reason": reason, "seconds": time.perf_counter() - started}
    json_path, markdown_path = report_paths(output)
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    with atomic_path(markdown_path) as tmp:
        tmp.write_text(markdown(report))
    return report


def report_paths(output: str | Path) -> tuple[Path, Path]:
    output = Path(output)
    return output.with_name(output.name + ".retrain.json"), output.with_name(output.name + ".retrain.md")


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Retrain: {report['decision']}",
        "",
        f"{report['reason']}.",
        "",
        f"- serving model: `{report['serving']['artifact']}` (trained with events up to "
        f"{report['serving']['event_cutoff']})",
        f"- store: `{report['store']}`, latest event {report['latest_event']}",
    ]
    if "events" in report:
        events = report["events"]
        lines.append(
            f"- hold-out: the {events['holdout_events']} most recent interaction events after "
            f"{events['after_cutoff_until']}: {events['holdout_pairs']} new (user, item) pairs of "
            f"{events['holdout_users']} users ({events['dropped_repeats']} repeats of known pairs dropped)"
        )
        if events.get("ratings_not_used"):
            lines.append(
                f"- {events['ratings_not_used']} ratings written through the service were not used: the training "
                "data has no ratings, so those interactions count without them"
            )
    if "candidate_metrics" in report:
        k = report["k"]
        lines += ["", f"| model | NDCG@{k} | Recall@{k} | HitRate@{k} |", "|---|---|---|---|"]
        for name in ("serving", "candidate"):
            m = report[f"{name}_metrics"]
            lines.append(f"| {name} | {m['ndcg']:.4f} | {m['recall']:.4f} | {m['hit_rate']:.4f} |")
        test = report["paired_test"]
        lines += [
            "",
            f"Paired {test['method']} test over {test['n_users']} users: p = {test['p_value']:.3g} "
            f"(reported; the decision uses the mean difference and the tolerance {report['tolerance']}).",
        ]
    if "artifact" in report:
        lines += ["", f"Artifact: `{report['artifact']['path']}` (event cut-off {report['artifact']['event_cutoff']})."]
    return "\n".join(lines) + "\n"
