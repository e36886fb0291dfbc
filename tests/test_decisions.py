"""People's decisions about images: how they are recorded, and what applying them does to a table."""

import pyarrow as pa

from fusion_core.store import Store
from fusion_core.store.decisions import Decisions


def test_applying_decisions_drops_the_excluded_and_corrects_labels():
    table = pa.table({"image_id": ["a", "b", "c", "d"], "label": ["cat", "dog", None, "cat"], "x": [1, 2, 3, 4]})
    table = pa.concat_tables([table.slice(0, 2), table.slice(2)])  # two chunks
    out = Decisions(frozenset({"b"}), {"c": "dog", "d": "dog", "zzz": "cat"}).apply(table)
    assert out.schema == table.schema
    assert out.to_pydict() == {"image_id": ["a", "c", "d"], "label": ["cat", "dog", "dog"], "x": [1, 3, 4]}
    assert Decisions().apply(table) is table and not Decisions()


def test_holdout_leaks_move_to_the_train_split():
    table = pa.table({"image_id": ["a", "b", "c"], "label": ["cat", "dog", "cat"], "split": ["test", "val", "test"]})
    out = Decisions(excluded=frozenset({"c"}), to_train=frozenset({"a", "c"})).apply(table)
    assert out.to_pydict() == {"image_id": ["a", "b"], "label": ["cat", "dog"], "split": ["train", "val"]}
    assert Decisions(to_train=frozenset({"a"})).counts() == {"excluded": 0, "relabelled": 0, "leaks_moved": 1}


def test_a_digest_names_the_decisions_whatever_their_order():
    one = Decisions(frozenset({"a", "b"}), {"c": "dog", "d": "cat"})
    assert one.digest() == Decisions(frozenset({"b", "a"}), {"d": "cat", "c": "dog"}).digest()
    assert one.digest() != Decisions(frozenset({"a"}), {"c": "dog", "d": "cat"}).digest() != Decisions().digest()


def test_a_decision_replaces_the_earlier_one_about_its_image_and_can_be_withdrawn(tmp_path):
    store = Store(str(tmp_path / "store"))
    store.record_sources([{"image_id": "ab" * 32, "source": "/data/a.png"}], "r1")
    assert store.resolve_images(["/data/a.png", "ababab", "abab", "ffffff"]) == {
        "/data/a.png": ["ab" * 32], "ababab": ["ab" * 32], "abab": [], "ffffff": []}
    store.decide([{"image_id": "ab" * 32, "action": "exclude"}, {"image_id": "cd" * 32, "action": "exclude"}], "ann")
    store.decide([{"image_id": "ab" * 32, "action": "relabel", "label": "dog", "reason": "checked"}], "bob")
    rows = {r["image_id"]: r for r in store.decision_rows()}
    assert (rows["ab" * 32]["action"], rows["ab" * 32]["actor"], rows["ab" * 32]["reason"]) == ("relabel", "bob",
                                                                                                  "checked")
    assert store.decisions() == Decisions(frozenset({"cd" * 32}), {"ab" * 32: "dog"})
    assert store.undecide(["cd" * 32, "ef" * 32]) == 1
    assert store.decisions() == Decisions(frozenset(), {"ab" * 32: "dog"})
