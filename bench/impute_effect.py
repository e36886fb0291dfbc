"""Does imputation matter for the model? The seed CNN trained on CIFAR-10 with 30% of pixels dropped.

Three runs with the same short schedule: pixels dropped and filled with the
per-image mean, dropped and filled with the default method (``auto``), and
the clean images. Each model is tested on the CIFAR-10 test set prepared the
same way (same mask rate, other seed; clean for the clean run).

    python bench/impute_effect.py [--train bench/data/train] [--test bench/data/test] [--epochs 3]

Writes bench/results/impute_effect.json (the run's date, commit and machine, and the rows under ``rows``) and
prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.cifar import cifar_folder, load_cifar  # noqa: E402
from record import RESULTS, run_context, write_results  # noqa: E402
from fusion_core.imaging.corrupt import corrupt_random  # noqa: E402
from fusion_core.imaging.impute import impute, psnr  # noqa: E402

DROP = 0.3
CHUNK = 2000


def drop_and_fill(images: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, float, float]:
    """Drop DROP of the pixels (seeded) and fill them; returns uint8 images, PSNR over the holes, seconds."""
    mask = corrupt_random(images.shape[:3], DROP, seed)
    out = np.empty_like(images)
    start = time.perf_counter()
    for i in range(0, len(images), CHUNK):
        part = images[i:i + CHUNK].copy()
        part[mask[i:i + CHUNK]] = 0
        out[i:i + CHUNK] = np.clip(np.rint(impute(part, mask[i:i + CHUNK], method)), 0, 255)
    seconds = time.perf_counter() - start
    return out, psnr(images, out, np.broadcast_to(mask[..., None], images.shape)), seconds


def train_and_test(x_train, y_train, x_test, y_test, epochs: int, seed: int) -> tuple[float, float]:
    """Fit the seed CNN (the project's ``build_model``) and return (test accuracy, seconds)."""
    import tf_keras

    from fusion_core.learning.model import build_model

    tf_keras.utils.set_random_seed(seed)
    model = build_model("seed_cnn", x_train.shape[1:], 10)
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=128, epochs=epochs, shuffle=True, verbose=2)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    return float(accuracy), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=HERE / "data" / "cifar10" / "train")
    parser.add_argument("--test", type=Path, default=HERE / "data" / "cifar10" / "test")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="use this many train (and a fifth as many test) images")
    parser.add_argument("--out", type=Path, default=RESULTS / "impute_effect.json")
    args = parser.parse_args()
    context = run_context()
    x_train, y_train, _ = load_cifar(cifar_folder(args.train, "train"), args.limit)
    x_test, y_test, _ = load_cifar(cifar_folder(args.test, "test"), args.limit and args.limit // 5)
    rows = []
    for variant in ("mean", "auto", "clean"):
        if variant == "clean":
            train, test, quality, fill_s = x_train, x_test, None, 0.0
        else:
            train, quality, fill_s = drop_and_fill(x_train, variant, args.seed + 1)
            test, _, _ = drop_and_fill(x_test, variant, args.seed + 2)
        accuracy, train_s = train_and_test(train, y_train, test, y_test, args.epochs, args.seed)
        rows.append({"variant": variant, "dropped": 0.0 if variant == "clean" else DROP,
                     "impute_method": None if variant == "clean" else variant,
                     "train_psnr_missing": None if quality is None else round(quality, 2),
                     "impute_s": round(fill_s, 1), "epochs": args.epochs, "train_s": round(train_s, 1),
                     "train_images": len(train), "test_images": len(test), "test_accuracy": round(accuracy, 4)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.out.resolve() == RESULTS / "impute_effect.json":
        write_results("impute_effect", {"rows": rows}, context)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**context, "rows": rows}, indent=2) + "\n")
    print("| training data | fill | PSNR of fill (dB) | epochs | test accuracy |\n|---|---|---:|---:|---:|")
    for r in rows:
        data = "clean" if r["variant"] == "clean" else f"{r['dropped']:.0%} pixels dropped"
        fill = r["impute_method"] or "-"
        quality = "-" if r["train_psnr_missing"] is None else f"{r['train_psnr_missing']:.2f}"
        print(f"| {data} | {fill} | {quality} | {r['epochs']} | {r['test_accuracy']:.4f} |")


if __name__ == "__main__":
    main()
