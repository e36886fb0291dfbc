"""Mining on CIFAR-10: near-duplicates injected among the training images, and the leaks between CIFAR-10's
own train and test split against ciFAIR's count.

CIFAR-10's JPEGs (``train/`` 50k, ``test/`` 10k) plus ``--copies`` transformed copies of random training images
(in turn: a shift by 2 and 1 pixels, a 28x28 crop resized back, a colour shift, a re-encoding at JPEG quality
40), saved beside their originals, go through Fusion's stages: ingest, preprocess, train (the ``best`` recipe,
``--epochs``), infer and mine. Then, on the stored embeddings and probabilities:

- injected: the mine stage's duplicate sets (``mining.duplicate_sets`` on the stored embeddings, the images'
  perceptual hashes and colour thumbnails) at each ``mine.near_duplicate_ratio`` of ``--ratios`` and
  ``mine.copy_distance`` of ``--distances`` (each set from all signals: embeddings, the hash and the nearest
  thumbnails), against the embeddings alone and the thumbnails alone. Recall: copies in the
  same set as their original. Precision: of the images in the copies' and originals' sets, those that are
  the right partner. Images in sets: all images in a set, copies or not (CIFAR-10 has duplicates of its own,
  so a few hundred beyond the copies are expected; thousands mean look-alikes are being joined).
- leaks: at the default settings, the CIFAR-10 test images in a set with a training image (ciFAIR, Barz &
  Denzler: 286 of the 10,000 have a near-duplicate in the training set) and in a set with another test image
  (ciFAIR: 39 pairs), and the model's test accuracy with and without the leaking images.

    python bench/mine.py [--copies 1000] [--epochs 5] [--ratios 0.05,0.1,0.2] [--distances 0.02,0.03,0.05,0.07]
                         [--keep] [--store DIR]

Writes bench/results/mine.json and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cifar import cifar_folder  # noqa: E402
from record import run_context, write_results  # noqa: E402

CIFAIR_TEST_LEAKS, CIFAIR_TEST_PAIRS = 286, 39
TRANSFORMS = ("shift", "crop and resize", "colour shift", "re-encoding")


def transformed(image: Image.Image, kind: str) -> bytes:
    """``image`` changed the way ``kind`` names, as JPEG bytes."""
    quality = 90
    if kind == "shift":
        pixels = np.pad(np.asarray(image), ((2, 0), (1, 0), (0, 0)), mode="edge")[:32, :32]
        image = Image.fromarray(pixels)
    elif kind == "crop and resize":
        image = image.crop((2, 2, 30, 30)).resize((32, 32), Image.BILINEAR)
    elif kind == "colour shift":
        pixels = np.asarray(image).astype(np.float32) * np.array([1.12, 1.0, 0.9]) + 6
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    else:
        quality = 40
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def file_id(data: bytes) -> str:
    """An image's id as ingest computes it from a file's bytes."""
    return hashlib.sha256(data).hexdigest()


def collection(data: Path, work: Path, copies: int, seed: int = 0) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A source folder holding CIFAR-10 (``train/``, ``test/``) and ``copies`` transformed copies of random
    training images; returns it, {copy id: original id} and {copy id: transform}."""
    source = work / "source"
    for split in ("train", "test"):
        shutil.copytree(cifar_folder(data / split, split), source / split)
    files = sorted((source / "train").glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    originals, kinds = {}, {}
    for i, path in enumerate(rng.choice(len(files), size=copies, replace=False)):
        original = files[path]
        kind = TRANSFORMS[i % len(TRANSFORMS)]
        data_ = transformed(Image.open(original).convert("RGB"), kind)
        (original.parent / f"copy-{i:05d}.jpg").write_bytes(data_)
        originals[file_id(data_)], kinds[file_id(data_)] = file_id(original.read_bytes()), kind
    return source, originals, kinds


def injected(sets: np.ndarray, position: dict[str, int], originals: dict[str, str]) -> dict:
    """Recall and precision of ``sets`` on the injected copies, and how many images are in sets."""
    found = right = mates = 0
    for copy, original in originals.items():
        c, o = position.get(copy), position.get(original)
        if c is None or o is None:
            continue
        if sets[c] >= 0 and sets[c] == sets[o]:
            found += 1
        for member in (c, o):
            if sets[member] >= 0:
                others = np.count_nonzero(sets == sets[member]) - 1
                mates += others
                right += sets[c] == sets[o]
    return {"recall": round(found / len(originals), 4), "precision": round(float(right) / mates, 4) if mates else None,
            "in_sets": int(np.count_nonzero(sets >= 0)), "sets": int(len(set(sets.tolist()) - {-1}))}


def build(settings, store, source: Path) -> dict:
    """Fusion's stages from ingest to mine on ``source``; the versions and each stage's seconds."""
    from fusion_core.stages.infer import infer_dataset
    from fusion_core.stages.ingest import ingest_source
    from fusion_core.stages.mine import mine_predictions
    from fusion_core.stages.preprocess import preprocess_dataset
    from fusion_core.stages.train import train_model

    seconds, started = {}, time.perf_counter()
    images = ingest_source(settings, store, str(source), "bench-mine-ingest").outputs["version"]
    pixels = preprocess_dataset(settings, store, images, "bench-mine-preprocess").outputs["version"]
    seconds["ingest_preprocess"], started = time.perf_counter() - started, time.perf_counter()
    model = train_model(settings, store, pixels, "bench-mine-train", None).outputs["model_version"]
    seconds["train"], started = time.perf_counter() - started, time.perf_counter()
    predictions = infer_dataset(settings, store, pixels, model, "bench-mine-infer").outputs["version"]
    seconds["infer"], started = time.perf_counter() - started, time.perf_counter()
    mine_predictions(settings, store, predictions, "bench-mine")
    seconds["mine_stage"] = time.perf_counter() - started
    return {"predictions": predictions, "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def signals(store, predictions: int) -> dict:
    """What the mine stage reads for duplicates, for every image of ``predictions``: ids, splits, whether the
    prediction is right, embeddings and their neighbours, perceptual hashes, colour thumbnails and their
    nearest."""
    from fusion_core.config import MineConfig
    from fusion_core.imaging.quality import thumbnails
    from fusion_core.learning import mining
    from fusion_core.stages.mine import _image_stats
    from fusion_core.store.datasets import fixed_list_to_array, read_shards

    preds = store.require_version("predictions", predictions)
    table = read_shards(store.root, [s["path"] for s in preds["shards"]],
                        columns=["image_id", "label", "split", "predicted", "embedding"])
    images = store.require_version("images", store.require_version("pixels", preds["info"]["pixels_version"])
                                   ["info"]["images_version"])
    stats = pa.concat_tables([_image_stats(store.root, s["path"]) for s in images["shards"]])
    position = pc.index_in(table.column("image_id"), stats.column("image_id"))
    cfg = MineConfig()
    x = fixed_list_to_array(table.column("embedding"))
    thumbs = thumbnails(pc.take(stats.column("thumb"), position))
    sims, idx = mining.neighbours(x, cfg.neighbours, cfg.exact_max)
    return {"ids": table.column("image_id").to_pylist(), "splits": np.asarray(table.column("split").to_pylist()),
            "right": np.asarray(table.column("predicted").to_pylist()) == np.asarray(table.column("label").to_pylist()),
            "x": x, "sims": sims, "idx": idx,
            "hashes": pc.take(stats.column("phash"), position).fill_null(0).to_numpy(),
            "thumbs": thumbs, "near": mining.neighbours(thumbs, cfg.neighbours, cfg.exact_max, cosine=False)[1],
            "model": store.get_model(preds["info"]["model_version"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "cifar10",
                        help="holds train/<class>/*.jpg and test/... (unpacked from the shared archives if missing)")
    parser.add_argument("--copies", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the best recipe")
    parser.add_argument("--ratios", default="0.05,0.1,0.2", help="mine.near_duplicate_ratio values")
    parser.add_argument("--distances", default="0.02,0.03,0.05,0.07", help="mine.copy_distance values")
    parser.add_argument("--store", type=Path, help="measure the newest predictions of a store an earlier run of "
                                                   "this script built (--keep) with the same --data and --copies")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (source and store)")
    args = parser.parse_args()
    context = run_context()
    os.environ.setdefault("FUSION_RAY__NODE_IP_ADDRESS", "127.0.0.2")

    from fusion_core.config import MineConfig, load_settings
    from fusion_core.imaging.quality import thumbnail_distance
    from fusion_core.learning import mining
    from fusion_core.store import Store

    work = Path(tempfile.mkdtemp(prefix="fusion-bench-mine-"))
    source, originals, kinds = collection(args.data, work, args.copies)
    if args.store:
        store = Store(str(args.store))
        built = {"predictions": max(v["version"] for v in store.list_versions("predictions")), "seconds": None}
    else:
        settings = load_settings(None, {"store.root": str(work / "store"), "ingest.val_fraction": 0.02,
                                        "train.recipe": "best", "train.epochs": args.epochs})
        store = Store.from_settings(settings)
        built = build(settings, store, source)
    got = signals(store, built["predictions"])
    position = {image_id: i for i, image_id in enumerate(got["ids"])}
    cfg = MineConfig()
    ratios = sorted({float(r) for r in args.ratios.split(",")} | {cfg.near_duplicate_ratio})
    distances = sorted({float(d) for d in args.distances.split(",")} | {cfg.copy_distance})

    def sets_of(ratio: float, distance: float | None, threshold: float = cfg.near_duplicate_similarity):
        alike = None if distance is None else (
            lambda a, b: thumbnail_distance(got["thumbs"][a], got["thumbs"][b]) <= distance)
        return mining.duplicate_sets(got["x"], got["sims"], got["idx"], threshold, ratio, got["hashes"], got["near"],
                                     alike)

    rows = [{"method": f"embeddings and thumbnails: ratio {r:g}, within {d:g}", "ratio": r, "copy_distance": d,
             **injected(sets_of(r, d), position, originals)} for d in distances for r in ratios]
    rows += [{"method": f"embeddings alone: ratio {r:g}", "ratio": r, "copy_distance": None,
              **injected(sets_of(r, None), position, originals)} for r in ratios]
    rows += [{"method": f"thumbnails alone: within {d:g}", "ratio": None, "copy_distance": d,
              **injected(sets_of(1e9, d, -1.0), position, originals)} for d in distances]

    sets = sets_of(cfg.near_duplicate_ratio, cfg.copy_distance)
    splits, right = got["splits"], got["right"]
    test = splits == "test"
    leaking = test & np.isin(sets, sets[~test & (sets >= 0)]) & (sets >= 0)
    test_sets = sets[test & (sets >= 0)]
    at_default = next(r for r in rows if r["ratio"] == cfg.near_duplicate_ratio
                      and r["copy_distance"] == cfg.copy_distance)
    row = {"copies": args.copies, "epochs": got["model"]["config"]["epochs"], "images": len(got["ids"]),
           "model_accuracy": round(got["model"]["metrics"]["accuracy"], 4), "seconds": built["seconds"],
           "injected": rows, "default_ratio": cfg.near_duplicate_ratio, "default_copy_distance": cfg.copy_distance,
           "recall_by_transform_at_default": {
               kind: injected(sets, position, {c: o for c, o in originals.items() if kinds[c] == kind})["recall"]
               for kind in TRANSFORMS},
           "test_images": int(test.sum()), "test_leaking": int(leaking.sum()), "cifair_test_leaks": CIFAIR_TEST_LEAKS,
           "test_sets_with_two_or_more_test_images": int(np.count_nonzero(np.bincount(test_sets) >= 2))
           if len(test_sets) else 0, "cifair_test_pairs": CIFAIR_TEST_PAIRS,
           "test_accuracy_all": round(float(right[test].mean()), 4),
           "test_accuracy_without_leaking": round(float(right[test & ~leaking].mean()), 4),
           "goal_injected_met": at_default["recall"] >= 0.95 and (at_default["precision"] or 0) >= 0.9}
    write_results("mine", row, context)
    report(row)
    if args.keep:
        print(f"kept {work} (measure its store again with --store {work / 'store'})")
    else:
        shutil.rmtree(work, ignore_errors=True)


def report(row: dict) -> None:
    print(f"{row['images']} images ({row['copies']} injected copies), best recipe {row['epochs']} epochs "
          f"(test accuracy {row['model_accuracy']:.3f}); seconds: {row['seconds']}")
    print(f"{'method':<64}{'recall':>8}{'precision':>11}{'in sets':>9}{'sets':>7}")
    for r in row["injected"]:
        precision = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        print(f"{r['method']:<64}{r['recall']:>8.3f}{precision:>11}{r['in_sets']:>9}{r['sets']:>7}")
    print(f"recall by transform at the defaults: {row['recall_by_transform_at_default']}")
    print(f"goal (recall >= 0.95 at precision >= 0.9, defaults): "
          f"{'met' if row['goal_injected_met'] else 'not met'}")
    print(f"test images with a training near-duplicate: {row['test_leaking']} of {row['test_images']} "
          f"(ciFAIR: {row['cifair_test_leaks']}); sets of test images: "
          f"{row['test_sets_with_two_or_more_test_images']} (ciFAIR: {row['cifair_test_pairs']} pairs)")
    print(f"test accuracy {row['test_accuracy_all']:.4f}, without the leaking images "
          f"{row['test_accuracy_without_leaking']:.4f}")


if __name__ == "__main__":
    main()
