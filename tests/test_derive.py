"""The derived-stage pattern (fusion_core.data.derive): reuse by idempotency key, on a real SQLite store."""

from __future__ import annotations

import pyarrow as pa

from fusion_core.data.derive import derivation_key, derive_dataset, derive_model
from fusion_core.store import Store
from fusion_core.store.datasets import read_shards, write_shard


def test_derivation_key_joins_its_parts():
    assert derivation_key("images", 3, "abc") == "images:3:abc"
    assert derivation_key("pixels", 1, "model", 2, "top3") == "pixels:1:model:2:top3"


def _builder(store: Store, calls: list, name: str):
    """A build that writes one real shard and counts its calls."""
    def build():
        calls.append(name)
        entry = write_shard(store.root, f"datasets/pixels/{name}.parquet", pa.table({"n": list(range(3))}))
        return [entry], {"built_by": name}
    return build


def test_derive_dataset_builds_once_then_reuses_by_key(tmp_path):
    store = Store(str(tmp_path / "store"))
    calls = []
    first, reused = derive_dataset(store, "pixels", "images:1:abc", "run-1", _builder(store, calls, "a"))
    assert (reused, calls) == (False, ["a"])
    assert (first["version"], first["key"], first["run_id"], first["num_rows"]) == (1, "images:1:abc", "run-1", 3)
    assert first["info"] == {"built_by": "a"}
    assert [(s["path"], s["num_rows"]) for s in first["shards"]] == [("datasets/pixels/a.parquet", 3)]
    assert store.latest_version("pixels")["version"] == 1  # committed
    assert read_shards(store.root, [s["path"] for s in first["shards"]]).num_rows == 3

    again, reused = derive_dataset(store, "pixels", "images:1:abc", "run-2", _builder(store, calls, "b"))
    assert reused is True and calls == ["a"]  # not built again
    assert again == first  # the same version, still attributed to the run that built it

    other, reused = derive_dataset(store, "pixels", "images:2:abc", "run-3", _builder(store, calls, "c"))
    assert reused is False and calls == ["a", "c"]
    assert (other["version"], other["key"], other["info"]) == (2, "images:2:abc", {"built_by": "c"})


def test_derive_dataset_keys_are_per_dataset(tmp_path):
    store = Store(str(tmp_path / "store"))
    calls = []
    derive_dataset(store, "pixels", "k", "run-1", _builder(store, calls, "a"))
    _, reused = derive_dataset(store, "predictions", "k", "run-1", _builder(store, calls, "b"))
    assert reused is False and calls == ["a", "b"]


def _register(store: Store, calls: list, key: str):
    def build() -> dict:
        calls.append(key)
        version = store.register_model(f"run-{len(calls)}", "seed_cnn", f"/models/{len(calls)}/model.keras", key,
                                       1, {"accuracy": 0.5}, {})
        return store.get_model(version)
    return build


def test_derive_model_reuses_by_key_unless_told_not_to(tmp_path):
    store = Store(str(tmp_path / "store"))
    calls = []
    first, reused = derive_model(store, "pixels:1:h", _register(store, calls, "pixels:1:h"))
    assert reused is False and first["version"] == 1 and calls == ["pixels:1:h"]

    again, reused = derive_model(store, "pixels:1:h", _register(store, calls, "pixels:1:h"))
    assert reused is True and again["version"] == 1 and len(calls) == 1

    forced, reused = derive_model(store, "pixels:1:h", _register(store, calls, "pixels:1:h"), reuse=False)
    assert reused is False and forced["version"] == 2 and len(calls) == 2
    # the newest model under the key is the one reused next
    assert derive_model(store, "pixels:1:h", _register(store, calls, "pixels:1:h"))[0]["version"] == 2

    other, reused = derive_model(store, "pixels:2:h", _register(store, calls, "pixels:2:h"))
    assert reused is False and other["version"] == 3 and len(calls) == 3
