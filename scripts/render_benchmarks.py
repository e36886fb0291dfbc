"""Render the benchmark figures in the docs from ``bench/results/*.json``.

Every figure a document shows sits between ``<!-- results: NAME -->`` and ``<!-- end results -->`` and is
written here from ``bench/results/NAME.json``: the tables, each goal marked met or not met, and the line
that says when, at which commit and on what machine it was measured. Text outside the markers carries no
figures. ``--check`` exits 1 when a document differs from what its results files give (the test suite runs it).

    python scripts/render_benchmarks.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOCUMENTS = [REPO / "docs" / "benchmarks.md", REPO / "docs" / "operations.md", REPO / "README.md"]
SOURCES = {"sizing": "scale"}  # a block rendered from another block's results file
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end results -->)", re.S)


# formatting ---------------------------------------------------------------------------------------------
def num(value, digits: int = 0) -> str:
    """A figure with thousands separators, or '-' for none."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(header: list[str], rows: list[list], right: set[int] | None = None) -> str:
    """A Markdown table; columns in ``right`` (default: all but the first) align right."""
    right = set(range(1, len(header))) if right is None else right
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    lines = [header, rule, *[[str(c) for c in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def goal(text: str, met: bool | None) -> str:
    mark = "not measured" if met is None else ("met" if met else "not met")
    return f"* {text}: **{mark}**"


def measured(data: dict) -> str:
    """When, where and at which commit a results file was measured (older files did not record it)."""
    if "machine" not in data:
        return ("_Date, commit and machine not recorded: these results predate the run records; rerun the "
                "script to refresh them._")
    m = data["machine"]
    isa = ", ".join(m.get("isa") or []) or "no AVX2"
    idle = "otherwise idle" if data.get("idle") else f"not idle (load {data.get('load_at_start')})"
    return (f"_Measured {data['date'][:10]} at commit `{data['commit']}` on {m['cpu_model']} ({m['cores']} cores; "
            f"{isa}), machine {idle}._")


# one function per results file ---------------------------------------------------------------------------
def scale(d: dict) -> str:
    rows = [[num(r["images"]), r["stage"], num(r["seconds"], 1), num(r["images_per_s"]),
             num(r.get("driver_peak_rss_mb")), num(r.get("run_peak_pss_mb")), num(r.get("machine_peak_mb")),
             num(r.get("store_mb"))] for r in d["rows"]]
    out = table(["images", "stage", "seconds", "images/s", "driver peak MB", "whole-run peak MB (PSS)",
                 "machine peak MB", "store MB"], rows, set(range(2, 8)) | {0})
    intervals = [r["sample_interval_s"] for r in d["rows"] if r.get("sample_interval_s")]
    sampled = (f"\n\nMemory was sampled every {max(intervals):.2f} s at worst (on average over a run); reading "
               "every process's proportional set size is slow." if intervals else "")
    return out + "\n\n" + "\n".join(f"* {g}" for g in d.get("goals", [])) + sampled


def ingest(d: dict) -> str:
    rows = [["Fusion ingest, folder -> committed Parquet", num(d["fusion_img_s"]), num(d["fusion_mb_s"], 1)],
            ["Ray Data `read_images(folder).write_parquet(out)` (baseline)", num(d["ray_data_img_s"]),
             num(d["ray_data_mb_s"], 1)],
            ["decode limit: fastest single-process loop x cores, bytes in memory", num(d["decode_limit_img_s"]), ""],
            ["Fusion ingest, straight from `train.tar.gz`", num(d["fusion_targz_img_s"]), num(d["fusion_targz_mb_s"], 1)]]
    layouts = table(["pixel column layout", "write us/image", "bytes/image"],
                    [[r["layout"], num(r["write_us_per_image"], 1), num(r["bytes_per_image"])]
                     for r in d.get("layouts", [])])
    return "\n".join([f"{num(d['images'])} images, {d['source_mb']} MB, {d['cores']} cores.", "",
                      table(["run", "images/s", "MB/s"], rows), "",
                      f"Peak RSS {num(d['peak_rss_mb'])} MB (Ray idle: {num(d['idle_rss_mb'])} MB).", "",
                      goal(f"10x the baseline ({d['speedup_vs_ray_data']}x)", d["goal_10x_ray_data_met"]),
                      goal(f"half the decode limit ({d['fraction_of_decode_limit']:.0%})",
                           d["goal_half_decode_limit_met"]), "", layouts])


def impute(d) -> str:
    rows = d["rows"] if isinstance(d, dict) else d
    patterns = list(dict.fromkeys(r["pattern"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    at = {(r["method"], r["pattern"]): r for r in rows}
    heads = ["method", *[f"{p} ({at[(methods[0], p)]['missing_fraction']:.0%})" for p in patterns]]
    parts = []
    for key, title, digits in (("psnr_missing", "PSNR over the missing pixels (dB)", 2),
                               ("ssim", "SSIM, whole image", 3), ("img_s_per_core", "images/s per core", 0)):
        parts += [f"**{title}**", "", table(heads, [[m, *[num(at[(m, p)][key], digits) for p in patterns]]
                                                     for m in methods]), ""]
    for pattern in ("random30", "blocks"):
        auto, ref, telea = at[("auto", pattern)], at[("skimage_biharmonic", pattern)], at[("telea", pattern)]
        gap, speed = auto["psnr_missing"] - ref["psnr_missing"], auto["img_s_per_core"] / telea["img_s_per_core"]
        parts.append(goal(f"{pattern}: `auto` within 0.5 dB of `inpaint_biharmonic` ({gap:+.2f} dB) and at least "
                          f"Telea's speed ({speed:.2f}x)", gap >= -0.5 and speed >= 1.0))
    harmonic_gap = max(at[("biharmonic", p)]["psnr_missing"] - at[("harmonic", p)]["psnr_missing"] for p in patterns)
    parts.append(f"\n`harmonic` is at most {harmonic_gap:.2f} dB behind `biharmonic` on any pattern here.")
    return (f"{rows[0]['n_images']:,} images per pattern.\n\n" + "\n".join(parts)).rstrip()


def impute_effect(d) -> str:
    rows = d["rows"] if isinstance(d, dict) else d
    body = table(["training and test data", "fill", "PSNR of the fill (dB)", "epochs", "test accuracy"],
                 [[f"{r['dropped']:.0%} of pixels dropped" if r["dropped"] else "clean", r["impute_method"] or "-",
                   num(r["train_psnr_missing"], 2), r["epochs"], num(r["test_accuracy"], 4)] for r in rows])
    by = {r["variant"]: r["test_accuracy"] for r in rows}
    if {"mean", "auto", "clean"} <= set(by):
        body += (f"\n\nMean fill costs {100 * (by['clean'] - by['mean']):.1f} points of accuracy against clean data; "
                 f"the default fill gets back {100 * (by['auto'] - by['mean']):.1f} of them.")
    return body


def infer(d: dict) -> str:
    rows = [[f"Fusion infer, {num(d['images'])} (commit included)", num(d["images"]), num(d["fusion_s"], 2),
             num(d["fusion_img_s"]), f"{d['ratio']:.2f}x"],
            ["plain `model.predict` (in memory)", num(d["images"]), num(d["plain_s"], 2), num(d["plain_img_s"]), ""]]
    if d.get("images_1m"):
        rows += [[f"Fusion infer, {num(d['images_1m'])} (commit included)", num(d["images_1m"]),
                  num(d["fusion_s_1m"], 1), num(d["fusion_img_s_1m"]), f"{d['ratio_1m']:.2f}x"],
                 ["plain `model.predict` (in memory)", num(d["images_1m"]), num(d["plain_s_1m"], 1),
                  num(d["plain_img_s_1m"]), ""]]
    ratios = [d["ratio"]] + ([d["ratio_1m"]] if d.get("ratio_1m") else [])
    return "\n".join([table(["run", "images", "seconds", "images/s", "ratio"], rows), "",
                      goal("at least 0.8x plain `model.predict` at every size", min(ratios) >= 0.8)])


def kmeans(d: dict) -> str:
    rows = [[f"Fusion (k-means on {num(d['sample'])}, then nearest)", num(d["fusion_s"], 2), num(d["fusion_nmi"], 3)],
            ["scikit-learn `MiniBatchKMeans`", num(d["sklearn_minibatch_s"], 2), num(d["sklearn_minibatch_nmi"], 3)]]
    ratio = d["fusion_s"] / d["sklearn_minibatch_s"]
    return "\n".join([f"{num(d['images'])} embeddings of {d['dim']} dimensions, k = {d['k']}.", "",
                      table(["run", "seconds", "NMI"], rows), "",
                      goal(f"no slower than `MiniBatchKMeans` at equal NMI ({ratio:.2f}x its time)",
                           d["goal_met"])])


def mine(d: dict) -> str:
    rows = [[r["method"], num(r["recall"], 3), num(r["precision"], 3), num(r["in_sets"]), num(r["sets"])]
            for r in d["injected"]]
    at = next(r for r in d["injected"]
              if r["ratio"] == d["default_ratio"] and r["copy_distance"] == d["default_copy_distance"])
    by_kind = ", ".join(f"{kind} {recall:.2f}" for kind, recall in d["recall_by_transform_at_default"].items())
    return "\n".join([
        f"{num(d['images'])} images: CIFAR-10's JPEGs and {num(d['copies'])} transformed copies of training images; "
        f"embeddings of the `best` recipe after {d['epochs']} epochs (test accuracy {d['model_accuracy']:.3f}).", "",
        table(["duplicate sets from", "recall", "precision", "images in sets", "sets"], rows), "",
        f"Recall by transform at the defaults (`mine.near_duplicate_ratio` {d['default_ratio']:g}, "
        f"`mine.copy_distance` {d['default_copy_distance']:g}): {by_kind}.", "",
        goal(f"injected copies found, recall >= 0.95 at precision >= 0.9 (recall {at['recall']:.3f}, precision "
             f"{num(at['precision'], 3)})", d["goal_injected_met"]),
        f"* CIFAR-10 test images in a set with a training image: {num(d['test_leaking'])} of "
        f"{num(d['test_images'])} (ciFAIR: {d['cifair_test_leaks']}); sets holding two or more test images: "
        f"{num(d['test_sets_with_two_or_more_test_images'])} (ciFAIR: {d['cifair_test_pairs']} pairs)",
        f"* test accuracy {d['test_accuracy_all']:.4f}; without the leaking test images "
        f"{d['test_accuracy_without_leaking']:.4f}",
        *(["* seconds per stage: " + ", ".join(f"{k.replace('_', ' ')} {v:,.0f}" for k, v in d["seconds"].items())]
          if d.get("seconds") else [])])


def train(d: dict) -> str:
    parts = [f"Training images {num(d['train_images'])}, validation {num(d['val_images'])}, test "
             f"{num(d['test_images'])}; precision policy `{d['policy']}`.", "",
             "**The `best` recipe (airbench94 in Keras), per seed:**", ""]
    if d.get("best_runs"):
        rows = [[r["seed"], num(r["acc"], 4), num(r["train_s"]), num(r["s"]), num(r.get("t90_s")),
                 num(r.get("t93_s")), num(r.get("t94_s"))] for r in d["best_runs"]]
        parts += [table(["seed", "test accuracy", "training s", "stage s", "to 90%", "to 93%", "to 94%"], rows), "",
                  f"Mean test accuracy {d['best_acc']:.4f} (std {d['best_acc_std']:.4f}) in "
                  f"{num(d['best_train_s'])} s of training.", "",
                  goal("94% within 30 minutes of training", d["best_acc"] >= 0.94 and d["best_train_s"] <= 1800)]
    else:
        parts += ["Not measured in this run (`--parts best`).", "",
                  goal("94% within 30 minutes of training", None)]
    if d.get("ablation"):
        full = d["ablation"][0]["test_acc"]
        parts += ["", f"**What each part is worth** ({d['ablation'][0]['epochs']} epochs, one seed):", "",
                  table(["variant", "test accuracy", "vs full (points)"],
                        [[a["variant"], num(a["test_acc"], 3), f"{100 * (a['test_acc'] - full):+.1f}"]
                         for a in d["ablation"]])]
    if d.get("overhead"):
        rows = [[num(d["train_images"]), num(d["plain_s"], 1), num(d["ray1_s"], 1), f"{d['overhead']:.3f}x", "1.15x",
                 "met" if d["overhead"] <= 1.15 else "not met"]]
        if d.get("overhead_400k"):
            rows.append([num(d["train_images_400k"]), num(d["plain_s_400k"], 1), num(d["ray1_s_400k"], 1),
                         f"{d['overhead_400k']:.2f}x", "1.10x", "met" if d["overhead_400k"] <= 1.10 else "not met"])
        parts += ["", "**Ray Train's cost** (the seed recipe through the train stage vs plain `model.fit` on the same "
                      "rows):", "", table(["images", "plain s", "Fusion s", "ratio", "goal", "result"], rows)]
        if d.get("ray1_epochs_s"):
            parts += ["", f"Of Fusion's {num(d['ray1_s'], 1)} s at {num(d['train_images'])} images, "
                          f"{num(d['ray1_epochs_s'], 1)} s are the epochs inside the worker (fit and validation); "
                          f"the other {num(d['ray1_s'] - d['ray1_epochs_s'], 1)} s start Ray Train's controller and "
                          "worker, read the worker's rows, write a checkpoint per epoch, and evaluate and register "
                          "the model."]
    return "\n".join(parts)


def warm_start(d: dict) -> str:
    runs = d.get("seeds") or [{**d, "seed": "-", "champion_train_s": sum(h["seconds"] for h in
                                                                        d["champion"]["history"])}]  # older files
    rows = []
    for r in runs:
        for name, label in (("champion", "yesterday"), ("cold", "today, cold"), ("warm", "today, warm")):
            curve = " ".join(f"{h['val_accuracy']:.3f}" for h in r[name]["history"])
            rows.append([r["seed"], label, r[name]["initialised_from"], curve, num(r[name]["holdout_accuracy"], 3),
                         num(sum(h["seconds"] for h in r[name]["history"]))])
    reach = table(["seed", "target val. accuracy", "cold start s", "warm start reaches it in s", "speedup",
                   "champion's own training s"],
                  [[r["seed"], num(r["target_val_accuracy"], 3), num(r["cold_train_s"]), num(r["warm_reach_s"]),
                    f"{r['speedup']:.2f}x" if r["speedup"] else "never", num(r["champion_train_s"])] for r in runs])
    return "\n".join([table(["seed", "run", "init", "validation accuracy per epoch", "holdout accuracy",
                             "training s"], rows, {4, 5}), "", reach, "",
                      f"{len(runs)} seeds; the warm start reached the cold start's final validation accuracy in "
                      f"{sum(bool(r['speedup']) for r in runs)} of them." if d.get("seeds") else
                      "One seed: this file predates the three-seed run (`--seeds 3`)."])


def drift(d: dict) -> str:
    rows = [[kind, s["nights"], s["flagged_nights"], f"{s['rate']:.2f}",
             ", ".join(f"{c} ({n})" for c, n in s["by_check"].items()) or "none"] for kind, s in d["summary"].items()]
    parts = [table(["night", "nights", "flagged", "rate", "checks that fired"], rows, {1, 2, 3})]
    if "false_alarms" in d:
        parts += ["", f"False alarms on the no-change nights, per check (`drift.alpha` {d['alpha']}, "
                      f"{d['bases']} base stores; champions' holdout accuracy "
                      f"{', '.join(format(c['accuracy'], '.3f') for c in d['champions'])}):", "",
                  table(["check", "nights", "flagged", "rate", "raw p < alpha", "allowed", "goal"],
                        [[c, q["nights"], q["flagged"], f"{q['rate']:.3f}", q["raw_p_below_alpha"], q["allowed"],
                          "constant on quiet nights" if q["constant"] else ("met" if q["met"] else "not met")]
                         for c, q in d["false_alarms"].items()], {1, 2, 3, 4, 5})]
    return "\n".join(parts)


def cluster(d: dict) -> str:
    rows = [[f"best model's {d['embedding_dim']}-d embeddings", num(d["nmi"], 3), num(d["ari"], 3), num(d["acc"], 3)],
            ["raw pixels (same k-means)", num(d["nmi_raw_pixels"], 3), num(d["ari_raw_pixels"], 3),
             num(d["acc_raw_pixels"], 3)]]
    return "\n".join([f"{num(d['images'])} test images, k = 10.", "",
                      table(["features", "NMI", "ARI", "cluster accuracy"], rows), "",
                      goal(f"NMI at least 0.80 ({d['nmi']:.3f})", d["nmi"] >= 0.80), "",
                      f"k-means on the same embeddings: Fusion {d['fusion_kmeans_s']:.2f} s, scikit-learn `KMeans` "
                      f"{d['sklearn_kmeans_s']:.2f} s."])


def kill_trials(d: dict) -> str:
    keys = ("trials", "killed", "survived", "lost_rows", "duplicated_rows", "content_differs", "fsck_errors",
            "orphans", "left_behind")
    rows = [[name, *[t.get(k, "-") for k in keys], num(d["clean_s"].get(name.split("/")[0]), 1),
             ", ".join(f"{k} {v}" for k, v in t.get("killed_processes", {}).items()) or "-"]
            for name, t in d["table"].items()]
    note = "" if d.get("complete", True) else (f"**Cut short**: {len(d['trials'])} trials of the planned "
                                               f"{d['planned']['driver']} driver and {d['planned']['worker']} "
                                               "worker trials per stage.\n\n")
    if d.get("planned") and d.get("complete", True):
        note = (f"{d['planned']['driver']} driver and {d['planned']['worker']} worker trials per stage (stages without "
                f"Ray: driver trials only), {d['per_class'] * 10:,} demo images.\n\n")
    diffs = [t["model_accuracy_diff"] for t in d["trials"] if t.get("model_accuracy_diff") is not None]
    if diffs:
        note += (f"Registered model's holdout accuracy minus the clean run's, over the trials that trained: from "
                 f"{min(diffs):+.3f} to {max(diffs):+.3f}")
        tolerances = {t["model_tolerance"] for t in d["trials"] if t.get("model_tolerance") is not None}
        note += f" (tolerance {min(tolerances):.3f}).\n\n" if tolerances else ".\n\n"
    return note + table(["stage/target", *[k.replace("_", " ") for k in keys], "clean stage s", "processes killed"], rows,
                 set(range(1, len(keys) + 2)))


def fuzz(d: dict) -> str:
    rows = [[f, r["cases"], r["images"], r["quarantined"], r["lost"], r["exceptions"], r["over_time"],
             f"{r['max_s']:.2f}"] for f, r in d["per_format"].items()]
    return "\n".join([table(["format", "cases", "images", "quarantine rows", "lost", "exceptions", "over time",
                             "slowest (s)"], rows), "",
                      goal(f"every case handled ({num(d['handled'])} of {num(d['cases'])} in {d['seconds']} s, "
                           f"seed {d['seed']})", d["handled"] == d["cases"] and not d["failures"])])


def profile(d: dict) -> str:
    total = sum(d["kinds"].values())
    return "\n".join([f"Batch {d['batch']}, `{d['policy']}`: a step takes {num(d['step_ms'])} ms "
                      f"({num(d['images_per_s'])} images/s).", "",
                      table(["kind", "ms per step", "share"],
                            [[k, num(v), f"{v / total:.1%}"] for k, v in d["kinds"].items()])])


def sizing(d: dict) -> str:
    """The largest measured size per stage, and 10M extrapolated along the slope between the two largest sizes."""
    sizes = sorted({r["images"] for r in d["rows"]})
    if len(sizes) < 2:
        return "Fewer than two sizes measured: nothing to extrapolate from."
    small, large = sizes[-2], sizes[-1]
    at = {(r["images"], r["stage"]): r for r in d["rows"]}
    target = 10_000_000

    def along(key: str, stage: str) -> float | None:
        a, b = at[(small, stage)].get(key), at[(large, stage)].get(key)
        if a is None or b is None:
            return None
        return b + (b - a) / (large - small) * (target - large)

    stages = [r["stage"] for r in d["rows"] if r["images"] == large]
    rows = [[stage, num(at[(large, stage)]["seconds"]), num(along("seconds", stage)),
             num(at[(large, stage)].get("driver_peak_rss_mb")), num(along("driver_peak_rss_mb", stage)),
             num(at[(large, stage)].get("run_peak_pss_mb")), num(along("run_peak_pss_mb", stage))] for stage in stages]
    store = along("store_mb", "ingest")
    return "\n".join([f"Measured at {num(small)} and {num(large)} images; the 10M columns follow the straight line "
                      f"through those two sizes (extrapolated, not measured).", "",
                      table(["stage", f"s at {num(large)}", "s at 10M", f"driver MB at {num(large)}",
                             "driver MB at 10M", f"whole run MB at {num(large)}", "whole run MB at 10M"], rows), "",
                      f"Store: {num(at[(large, 'ingest')].get('store_mb'))} MB at {num(large)} images, about "
                      f"{num(store)} MB at 10M."])


RENDERERS = {f.__name__: f for f in (scale, sizing, ingest, impute, impute_effect, infer, kmeans, mine, train,
                                       warm_start, drift, cluster, kill_trials, fuzz, profile)}


def render_block(name: str) -> str:
    """The Markdown for one results file: its figures, then when and where they were measured."""
    data = json.loads((RESULTS / f"{SOURCES.get(name, name)}.json").read_text())
    body = RENDERERS[name](data)
    return f"{body}\n\n{measured(data) if isinstance(data, dict) else measured({})}\n"


def render(text: str) -> str:
    """``text`` with every results block rendered anew."""
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group("name")) + m.group(4), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a document is not what its results give")
    args = parser.parse_args()
    stale = []
    for doc in DOCUMENTS:
        text = doc.read_text()
        new = render(text)
        if new != text:
            stale.append(doc.relative_to(REPO))
            if not args.check:
                doc.write_text(new)
    if args.check and stale:
        print(f"out of date with bench/results: {', '.join(map(str, stale))}; run python scripts/render_benchmarks.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
