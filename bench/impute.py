"""Missing-pixel imputation: every method on every mask pattern, against scikit-image and OpenCV, in one run.

For each mask pattern of ``fusion_core.imaging.corrupt`` and each method of
``fusion_core.imaging.impute`` (plus ``auto``), and the two references, scikit-image's
``inpaint_biharmonic`` (quality) and OpenCV's Telea (speed): PSNR and SSIM over
the missing pixels and over the whole image, and images per CPU-second on one
thread (process time, so other load on the machine does not count).

    python bench/impute.py [--data bench/data/test] [--n 2000] [--seed 0]

Writes bench/results/impute.json (the run's date, commit and machine, and the rows under ``rows``) and prints
the table.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core per measurement

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from skimage.metrics import structural_similarity  # noqa: E402
from skimage.restoration import inpaint_biharmonic  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.cifar import cifar_folder, load_cifar  # noqa: E402
from record import RESULTS, run_context, write_results  # noqa: E402
from fusion_core.imaging.corrupt import PATTERNS, corrupt_pattern  # noqa: E402
from fusion_core.imaging.impute import CHOICES, impute, psnr  # noqa: E402

QUALITY_REF, SPEED_REF, DEFAULT = "skimage_biharmonic", "telea", "auto"
GOAL_PATTERNS, GOAL_DB = ("random30", "blocks"), 0.5


def skimage_biharmonic(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The quality reference, image by image."""
    return np.stack([inpaint_biharmonic(img / 255.0, m, channel_axis=-1) * 255.0 for img, m in zip(images, mask)])


def ssim_scores(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean SSIM (7x7 window, scikit-image) over the missing pixels and over the whole image."""
    missing, whole = [], []
    pad = 3
    for ref, est, m in zip(reference, estimate, mask):
        whole_i, smap = structural_similarity(ref.astype(np.float64), est.astype(np.float64), channel_axis=-1,
                                              data_range=255.0, full=True)
        whole.append(whole_i)
        inner = np.zeros_like(m)
        inner[pad:-pad, pad:-pad] = m[pad:-pad, pad:-pad]
        missing.append(smap[inner].mean() if inner.any() else np.nan)
    return float(np.nanmean(missing)), float(np.mean(whole))


def run(images: np.ndarray, seed: int) -> list[dict]:
    """One row per (method, pattern)."""
    methods = list(CHOICES) + [QUALITY_REF]
    rows = []
    for p, pattern in enumerate(PATTERNS):
        mask = corrupt_pattern(pattern, images.shape[:3], seed + p)
        corrupted = images.copy()
        corrupted[mask] = 0  # nothing of the truth under the holes
        mask3 = np.broadcast_to(mask[..., None], images.shape)
        impute(corrupted, mask, DEFAULT)  # warm up the allocator: the first big run pays its page faults
        for method in methods:
            fill = skimage_biharmonic if method == QUALITY_REF else lambda im, m, name=method: impute(im, m, name)
            fill(corrupted[:16], mask[:16])  # warm up: imports and caches do not count
            start = time.process_time()
            out = fill(corrupted, mask)
            cpu = time.process_time() - start
            out = np.clip(np.rint(out), 0, 255)  # what preprocess stores
            ssim_missing, ssim_whole = ssim_scores(images, out, mask)
            rows.append({"method": method, "pattern": pattern, "missing_fraction": round(float(mask.mean()), 4),
                         "psnr_missing": round(psnr(images, out, mask3), 2), "psnr": round(psnr(images, out), 2),
                         "ssim_missing": round(ssim_missing, 4), "ssim": round(ssim_whole, 4),
                         "img_s_per_core": round(len(images) / cpu, 1), "n_images": len(images)})
            print(f"{pattern:12s} {method:24s} {rows[-1]['psnr_missing']:6.2f} dB {rows[-1]['img_s_per_core']:9.1f} img/s",
                  file=sys.stderr, flush=True)
    return rows


def mark_goal(rows: list[dict]) -> list[dict]:
    """Mark the default method's rows on the goal patterns ``met`` / ``not met``."""
    by = {(r["method"], r["pattern"]): r for r in rows}
    for pattern in GOAL_PATTERNS:
        row, ref, fast = by[(DEFAULT, pattern)], by[(QUALITY_REF, pattern)], by[(SPEED_REF, pattern)]
        quality = row["psnr_missing"] >= ref["psnr_missing"] - GOAL_DB
        speed = row["img_s_per_core"] >= fast["img_s_per_core"]
        row["goal"] = "met" if quality and speed else "not met"
        row["goal_detail"] = (f"{row['psnr_missing'] - ref['psnr_missing']:+.2f} dB vs {QUALITY_REF} (need >= -{GOAL_DB}), "
                              f"{row['img_s_per_core'] / fast['img_s_per_core']:.2f}x {SPEED_REF} speed (need >= 1)")
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table of the rows."""
    lines = ["| pattern | method | PSNR missing (dB) | PSNR image (dB) | SSIM missing | SSIM image | img/s per core | goal |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        goal = f"**{r['goal']}** ({r['goal_detail']})" if "goal" in r else ""
        lines.append(f"| {r['pattern']} | {r['method']} | {r['psnr_missing']:.2f} | {r['psnr']:.2f} | "
                     f"{r['ssim_missing']:.4f} | {r['ssim']:.4f} | {r['img_s_per_core']:,.0f} | {goal} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "cifar10" / "test")
    parser.add_argument("--n", type=int, default=2000, help="test images (evenly spaced over the classes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "impute.json")
    args = parser.parse_args()
    context = run_context()
    cv2.setNumThreads(1)
    images, _, _ = load_cifar(cifar_folder(args.data, "test"), args.n)
    rows = mark_goal(run(images, args.seed))
    if args.out.resolve() == RESULTS / "impute.json":
        write_results("impute", {"rows": rows}, context)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**context, "rows": rows}, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
