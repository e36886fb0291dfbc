"""Mining on planted problems: near-copies (one straddling train and test), flipped labels, a far-off image."""

import numpy as np
import pyarrow as pa
import pytest

from fusion_core.config import MineConfig
from fusion_core.learning import mining
from fusion_core.stages.mine import mine_table
from fusion_core.store.datasets import array_to_fixed_list

CLASSES = [f"c{i}" for i in range(5)]


@pytest.fixture(scope="module")
def world():
    """600 embeddings around 5 class centres; rows 1 and 2 near-copies of row 0 (row 2 in test); 30 labels
    flipped; row 599 far from everything."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 600)
    x = 4 * rng.normal(size=(5, 32))[truth] + rng.normal(size=(600, 32))
    x[1], x[2] = x[0] + 0.01 * rng.normal(size=32), x[0]
    x[599] = 30 * rng.normal(size=32)
    splits = np.array(["train"] * 480 + ["val"] * 60 + ["test"] * 60, dtype=object)
    splits[2] = "test"
    labels = truth.copy()
    flipped = rng.choice(np.arange(10, 590), 30, replace=False)
    labels[flipped] = (labels[flipped] + 1) % 5
    return {"x": x, "truth": truth, "labels": labels, "splits": splits, "flipped": flipped}


def test_neighbours_leave_each_image_out_and_approximate_search_agrees_with_exact(world):
    sims, idx = mining.neighbours(world["x"], 5)
    assert sims.shape == idx.shape == (600, 5)
    assert not (idx == np.arange(600)[:, None]).any()
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # most similar first
    _, approximate = mining.neighbours(world["x"], 5, exact_max=100)  # an HNSW graph
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(idx, approximate)])
    assert recall >= 0.95


def test_near_copies_form_one_set_and_a_set_across_train_and_test_leaks(world):
    sims, idx = mining.neighbours(world["x"], 5)
    sets = mining.duplicate_sets(world["x"], sims, idx, 0.99)
    assert sets[0] == sets[1] == sets[2] >= 0
    assert (sets >= 0).sum() == 3
    assert mining.leaking_sets(sets, world["splits"]).tolist() == [sets[0]]
    assert mining.uniqueness(sims).argmax() == 599


def test_confident_learning_finds_flipped_labels_and_suggests_the_true_ones(world):
    probs = mining.out_of_sample_probs(world["x"], world["labels"], folds=5, seed=0)
    flagged, quality, suggested = mining.label_issues(world["labels"], probs)
    hits = np.isin(np.nonzero(flagged)[0], world["flipped"]).sum()
    assert hits / flagged.sum() >= 0.8 and hits / len(world["flipped"]) >= 0.8
    assert (suggested[world["flipped"]] == world["truth"][world["flipped"]]).mean() >= 0.9
    assert quality[world["flipped"]].mean() < quality[~np.isin(np.arange(600), world["flipped"])].mean()


def test_hardness_and_mistakenness_span_zero_to_one():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert np.allclose(mining.hardness(probs), [0.0, 1.0], atol=1e-6)
    assert np.allclose(mining.mistakenness(probs, np.array([1, 0])), [1.0, 2 / 3])


def test_mine_table_flags_each_planted_problem(world):
    probs = np.full((600, 5), 0.2, dtype=np.float32)
    unlabelled = 598
    labels = [CLASSES[v] for v in world["labels"]]
    labels[unlabelled] = None
    predictions = pa.table({
        "image_id": [f"img{i:03d}" for i in range(600)], "label": labels, "split": list(world["splits"]),
        "predicted": ["c0"] * 600, "probs": array_to_fixed_list(probs),
        "embedding": array_to_fixed_list(world["x"].astype(np.float32))})
    mined = mine_table(predictions, CLASSES, MineConfig(near_duplicate_similarity=0.99, outlier_fraction=0.002))
    rows = mined.to_pylist()
    assert [r["leak"] for r in rows[:3]] == [True, True, True] and sum(r["leak"] for r in rows) == 3
    assert rows[1]["nearest_id"] in ("img000", "img002") and rows[1]["nearest_similarity"] > 0.99
    assert rows[599]["outlier"] and sum(r["outlier"] for r in rows) == 2
    flagged = {i for i, r in enumerate(rows) if r["label_issue"]}
    assert len(flagged & set(world["flipped"])) >= 24
    assert rows[unlabelled]["label_quality"] is None and not rows[unlabelled]["label_issue"]
    assert all(r["hardness"] == pytest.approx(1.0) for r in rows)


def test_a_tight_class_is_not_a_duplicate_set_and_sets_do_not_chain():
    """Embeddings a classifier pulled together (every neighbour above the absolute threshold) hold no
    duplicates but the planted copy; a chain of look-alikes is not strung into one set."""
    rng = np.random.default_rng(1)
    x = np.ones(16) + 0.02 * rng.normal(size=(300, 16))
    x[1] = x[0] + 1e-4 * rng.normal(size=16)
    sims, idx = mining.neighbours(x, 5)
    assert sims.min() > 0.97
    sets = mining.duplicate_sets(x, sims, idx, 0.97, ratio=0.1)
    assert sets[0] == sets[1] >= 0 and (sets >= 0).sum() == 2
    angles = np.radians([0, 8, 16, 24])  # neighbours 0.990 alike, two apart 0.961
    chain = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    sims, idx = mining.neighbours(chain, 3)
    assert mining.duplicate_sets(chain, sims, idx, 0.98).tolist() == [0, 0, 0, -1]  # row 3 alike only via 2


def test_hashes_and_nearest_thumbnails_are_candidates_and_every_pair_must_look_alike():
    """Rows 0-1 and 2-3 are near-copies that the embedding neighbours given do not pair; a shared hash or
    the nearest thumbnails make them candidates, and ``alike`` can still turn a pair down."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 16))
    x[1], x[3] = x[0] + 1e-4 * rng.normal(size=16), x[2] + 1e-4 * rng.normal(size=16)
    idx = ((np.arange(40) + 5) % 40)[:, None]  # unrelated rows as the "neighbours"
    sims = np.einsum("ij,ij->i", mining.normalised(x), mining.normalised(x)[idx[:, 0]])[:, None]
    assert (mining.duplicate_sets(x, sims, idx, 0.97, 0.1) == -1).all()
    hashes = np.zeros(40, np.int64)
    hashes[[0, 1]] = 9
    assert np.flatnonzero(mining.duplicate_sets(x, sims, idx, 0.97, 0.1, hashes) >= 0).tolist() == [0, 1]
    thumbs = np.array([[1], [0], [3], [2]] + [[(i + 7) % 40] for i in range(4, 40)])
    sets = mining.duplicate_sets(x, sims, idx, 0.97, 0.1, candidates=thumbs)
    assert sets[0] == sets[1] >= 0 and sets[2] == sets[3] >= 0 and sets[0] != sets[2] and (sets >= 0).sum() == 4
    not_2_3 = lambda a, b: np.minimum(a, b) != 2  # noqa: E731
    sets = mining.duplicate_sets(x, sims, idx, 0.97, 0.1, candidates=thumbs, alike=not_2_3)
    assert np.flatnonzero(sets >= 0).tolist() == [0, 1]
    _, near = mining.neighbours(x, 2, cosine=False)
    assert near[0, 0] == 1 and near[3, 0] == 2
