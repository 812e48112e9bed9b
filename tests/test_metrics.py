import numpy as np
import pytest

from dvclust import metrics


def test_permuted_ids_score_perfectly():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([2, 2, 0, 0, 1, 1])
    assert metrics.acc(y, pred) == 1.0
    assert metrics.nmi(y, pred) == pytest.approx(1.0)
    assert metrics.ari(y, pred) == pytest.approx(1.0)


def test_acc_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([1, 1, 0, 0, 0, 0])  # best map: 1->0 (2 right), 0->1 (3 right)
    assert metrics.acc(y, pred) == pytest.approx(5 / 6)
    assert metrics.matching(y, pred) == {1: 0, 0: 1}


def test_majority_cluster_is_exposed_by_recall():
    y = np.array([0] * 9 + [1])
    pred = np.zeros(10, dtype=int)  # everything in one cluster
    assert metrics.acc(y, pred) == pytest.approx(0.9)
    assert metrics.per_class_recall(y, pred) == {0: 1.0, 1: 0.0}


def test_more_clusters_than_classes():
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 2, 2])
    assert metrics.acc(y, pred) == pytest.approx(3 / 4)
    assert metrics.cluster_sizes(pred) == [1, 1, 2]
    ev = metrics.evaluate(y, pred)
    assert set(ev) >= {"acc", "nmi", "ari", "per_class_recall", "cluster_sizes"}
    assert metrics.evaluate(y, pred, 5)["cluster_sizes"] == [1, 1, 2, 0, 0]  # empty ones listed
