"""Drift checks: the statistics on their own, then the stage on real stores (Ray, a trained champion)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fusion_core.demo_data import CLASSES, generate_demo_images
from fusion_core.stages.drift import corrected, holm, mix_check, mmd_test, shift_check


# statistics ------------------------------------------------------------------------------------

def test_mix_check_flags_a_changed_mix_but_not_sampling_noise():
    rng = np.random.default_rng(0)
    mix = np.full(10, 0.1)
    reference = dict(enumerate(rng.multinomial(2000, mix)))
    same = dict(enumerate(rng.multinomial(60, mix)))  # small: its proportions wander by chance
    changed = dict(enumerate(rng.multinomial(300, [0.4, 0.4, 0.2] + [0.0] * 7)))
    assert not mix_check("labels", reference, same, 0.15, 0.01)["flagged"]
    flagged = mix_check("labels", reference, changed, 0.15, 0.01)
    assert flagged["flagged"] and flagged["value"] > 0.5 and flagged["p_value"] < 1e-6


def test_mix_check_of_identical_single_category_counts_is_quiet():
    assert mix_check("sizes", {"32x32x3": 500}, {"32x32x3": 80}, 0.15, 0.01)["value"] == 0.0


def _channel_stats(x: np.ndarray) -> dict:
    image_means = x.mean(axis=(1, 2))
    return {"n": len(x), "mean": x.mean(axis=(0, 1, 2)), "std": x.std(axis=(0, 1, 2)),
            "image_mean": image_means.mean(axis=0), "image_std": image_means.std(axis=0)}


def test_shift_check_flags_darker_images_only():
    rng = np.random.default_rng(1)

    def images(n, scale=1.0):
        colours = rng.integers(0, 256, size=(n, 1, 1, 3))
        return np.clip(colours + rng.normal(0, 8, size=(n, 8, 8, 3)), 0, 255) * scale

    reference = _channel_stats(images(1000))
    assert not shift_check("pixels", reference, _channel_stats(images(100)), 0.25, 0.01)["flagged"]
    assert shift_check("pixels", reference, _channel_stats(images(100, 0.5)), 0.25, 0.01)["flagged"]


def test_shift_check_on_a_quiet_night_holds_its_level_over_three_channels():
    """Same distribution on both sides: the corrected p-value falls below alpha at most alpha of the time (the
    uncorrected smallest of three channels' p-values did so about three times as often)."""
    rng = np.random.default_rng(3)
    reference = _channel_stats(rng.normal(128, 30, size=(2000, 2, 2, 3)))
    nights = [shift_check("pixels", reference, _channel_stats(rng.normal(128, 30, size=(200, 2, 2, 3))), 0.0, 0.05)
              for _ in range(400)]
    assert np.mean([n["p_value"] < 0.05 for n in nights]) <= 0.05 + 0.02


def test_holm_adjusts_step_down_and_keeps_order():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([]) == []


def test_a_night_is_flagged_on_holm_adjusted_p_values():
    checks = [{"check": "a", "value": 1.0, "threshold": 0.1, "p_value": 0.006, "flagged": True},
              {"check": "b", "value": 1.0, "threshold": 0.1, "p_value": 0.0001, "flagged": True},
              {"check": "c", "value": 0.0, "threshold": 0.1, "p_value": 1.0, "flagged": False},
              {"check": "d", "value": 0.3, "threshold": 0.1, "p_value": None, "flagged": True}]
    out = {c["check"]: c for c in corrected(checks, 0.01)}
    assert not out["a"]["flagged"] and out["a"]["p_adjusted"] == pytest.approx(0.012)  # 0.006 x 2 (second smallest)
    assert out["b"]["flagged"] and out["d"]["flagged"] and not out["c"]["flagged"]


def test_mmd_test_tells_shifted_embeddings_from_a_fresh_sample():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(150, 8))
    assert mmd_test(reference, rng.normal(size=(150, 8)))[1] > 0.01
    value, p_value = mmd_test(reference, rng.normal(size=(150, 8)) + np.eye(8)[0] * 0.8)
    assert value > 0 and p_value < 0.01 / 8  # small enough to pass Holm's correction over a night's 8 checks


# the stage -------------------------------------------------------------------------------------

def _darker_few_classes(src, dst, classes, factor=0.45):
    """Copies of ``classes``' images of a demo collection, darkened (a new camera, a new class mix)."""
    for name in classes:
        (dst / name).mkdir(parents=True)
        for path in (src / name).glob(f"{name}-*"):
            with Image.open(path) as img:
                dark = (np.asarray(img.convert("RGB"), dtype=np.float64) * factor).astype(np.uint8)
            Image.fromarray(dark).save(dst / name / f"{path.stem}.png")


@pytest.mark.ray
@pytest.mark.tf
def test_drift_is_flagged_for_a_new_class_mix_of_darker_images_not_for_a_no_change_night(tmp_path, ray_local):
    from fusion_core.config import load_settings
    from fusion_core.stages.drift import check_drift
    from fusion_core.stages.ingest import ingest_source
    from fusion_core.stages.preprocess import preprocess_dataset
    from fusion_core.stages.train import train_model
    from fusion_core.store import Store

    # alpha 0.001: a quiet night raises a false alarm about that often (the tests' p-values are uniform when
    # nothing changed), while the injected drift below is far stronger.
    settings = load_settings("smoke", {"store.root": str(tmp_path / "store"), "train.epochs": 3,
                                       "drift.alpha": 0.001})
    store = Store.from_settings(settings)

    def night(source) -> dict:
        run_id = store.start_run("nightly", {})
        images = ingest_source(settings, store, str(source), run_id).outputs["version"]
        pixels = preprocess_dataset(settings, store, images, run_id).outputs["version"]
        checked = check_drift(settings, store, pixels, run_id, store.champion_version())
        return checked.as_dict() | {"pixels": pixels, "run_id": run_id}

    generate_demo_images(tmp_path / "day1", per_class=40, seed=10, corrupt=0)
    first = night(tmp_path / "day1")
    assert first["outputs"]["checks"] == [] and "no champion yet" in first["outputs"]["note"]
    train_model(settings, store, first["pixels"], first["run_id"], None)

    generate_demo_images(tmp_path / "day2", per_class=15, seed=11, corrupt=0)  # the same world, new images
    quiet = night(tmp_path / "day2")
    assert quiet["counts"]["new_images"] == 150
    checks = {c["check"]: c for c in quiet["outputs"]["checks"]}
    assert set(checks) == {"label_mix", "size_mix", "missing_rate", "quarantine_rate", "pixel_shift",
                           "confidence_drop", "embedding_mmd", "cluster_mix"}
    assert quiet["outputs"]["flagged"] == [], checks

    generate_demo_images(tmp_path / "day3-raw", per_class=60, seed=12, corrupt=0)
    _darker_few_classes(tmp_path / "day3-raw", tmp_path / "day3", CLASSES[:3])
    drifted = night(tmp_path / "day3")
    flagged = set(drifted["outputs"]["flagged"])
    # The data checks catch it for certain; the champion-scored ones depend on how well this 3-epoch model
    # learnt (bench/drift.py measures them with a trained one).
    assert {"label_mix", "pixel_shift"} <= flagged, drifted["outputs"]["checks"]
    assert len(drifted["outputs"]["checks"]) == 8
