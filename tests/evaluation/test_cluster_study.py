"""The anime clustering study's flow through `recforge compare`: elbow curves of a model's item
embeddings, and the model answered from each user's nearest cluster, new users included (their
weighted-average or folded-in vector picks the cluster)."""

from __future__ import annotations

import numpy as np
import pytest

from recforge.evaluation.report import write_report
from recforge.experiment import run_experiment


@pytest.mark.slow
def test_cluster_retrieval_and_elbow_through_compare(tmp_path, data_dir):
    config = {
        "name": "clusters",
        "dataset": {"name": "ml-100k"},
        "split": {"kind": "user_disjoint", "test_user_fraction": 0.2},
        "evaluation": {
            "ks": [10],
            "clusters": {"methods": ["kmeans", "gmm"], "n_clusters": 8, "elbow": [2, 4, 8, 16]},
        },
        "models": [{"model": "ials", "params": {"n_factors": 32}}],
    }
    result = run_experiment(config)
    runs = {run.label: run for run in result.runs}
    assert set(runs) == {"most_popular", "ials", "ials · kmeans-8", "ials · gmm-8"}
    inertia = runs["ials"].elbow["kmeans"]
    assert list(inertia) == ["2", "4", "8", "16"] and all(
        a > b for a, b in zip(list(inertia.values()), list(inertia.values())[1:], strict=False)
    )
    ndcg = {label: run.results["ranking"].summary["ndcg@10"] for label, run in runs.items()}
    # held-out users come with a history only: their fold-in vector picks the cluster
    assert set(runs["ials · kmeans-8"].results["ranking"].recommended.served_by) == {"history"}
    # the nearest cluster narrows the list but keeps it personal: above popularity, below the full scan
    assert ndcg["most_popular"] < ndcg["ials · kmeans-8"] < ndcg["ials"], ndcg

    write_report(result, tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Clusters of item embeddings" in report and (tmp_path / "report" / "plots" / "elbow.png").exists()
    assert "ials · gmm-8" in report


def test_clustered_lists_stay_inside_the_nearest_cluster(ml100k):
    from recforge.data.splits import per_user_split
    from recforge.models import create_model
    from recforge.models.clustered import ClusteredRecommender

    split = per_user_split(ml100k, 0.2, seed=0)
    model = create_model("ials", n_factors=16, n_iterations=5).fit(split.train)
    clustered = ClusteredRecommender.around(model, n_clusters=6, method="kmeans")
    users = np.arange(50)
    top = clustered.recommend(users, k=10, external_ids=False)
    nearest = clustered.retriever_.nearest_cluster(model.user_embeddings(users))
    labels = clustered.retriever_.clusters_.labels
    for row, user_cluster in enumerate(nearest):
        listed = top.item_index[row][top.item_index[row] >= 0]
        assert len(listed) and (labels[listed] == user_cluster).all()
        seen = split.train.to_csr()[users[row]].indices
        assert not set(listed) & set(seen)
