"""Where a training step of the best recipe goes on this machine: convolutions vs the rest.

Builds the ``best`` recipe's network (airbench) under the same dtype policy Fusion trains with, runs
warm-up steps on a batch of random images, then traces ``--steps`` steps with TensorFlow's profiler and
sums each op's own time by kind (convolutions forward and backward, batch norm, activations, pooling,
casts, the optimizer, the rest). The baseline is the whole step's wall time in the same run.

    python bench/profile_step.py [--batch 1024] [--steps 5]

Writes bench/results/profile.json and prints a table.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

from record import run_context, write_results

# op type (as the profiler names it) -> kind; the first matching prefix wins
KINDS = (
    ("FusedBatchNorm", "batch norm"), ("_MklFusedBatchNorm", "batch norm"), ("_MklNativeFusedBatchNorm", "batch norm"),
    ("Conv2DBackprop", "convolutions, backward"), ("_MklNativeConv2DBackprop", "convolutions, backward"),
    ("_MklConv2DBackprop", "convolutions, backward"),
    ("Conv2D", "convolutions, forward"), ("_FusedConv2D", "convolutions, forward"),
    ("_MklConv", "convolutions, forward"), ("_MklNativeConv", "convolutions, forward"),
    ("_MklNativeFusedConv", "convolutions, forward"),
    ("Gelu", "activations (GELU: erf, exp)"), ("Erf", "activations (GELU: erf, exp)"),
    ("Exp", "activations (GELU: erf, exp)"), ("Softmax", "loss"),
    ("MaxPool", "pooling"), ("_MklNativeMaxPool", "pooling"), ("_MklMaxPool", "pooling"),
    ("Cast", "casts (bfloat16 <-> float32)"),
    ("ResourceApply", "optimizer"), ("AssignSub", "optimizer"), ("AssignAdd", "optimizer"),
)


def kind_of(op_type: str) -> str:
    return next((kind for prefix, kind in KINDS if op_type.startswith(prefix)), "other (element-wise, reshapes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    context = run_context()

    import numpy as np
    import tensorflow as tf
    import tf_keras
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as profiler_plugin

    from fusion_core.learning.model import build_model
    from fusion_core.learning.train_loop import precision_policy
    from fusion_core.recipes import RECIPES

    policy = precision_policy(True)
    tf_keras.mixed_precision.set_global_policy(policy)
    recipe = RECIPES["best"]
    model = build_model("airbench", (32, 32, 3), 10, recipe.learning_rate, recipe=recipe, steps_per_epoch=50)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, 256, (args.batch, 32, 32, 3)).astype(np.uint8))
    y = tf.constant(rng.integers(0, 10, args.batch))
    step = model.make_train_function()
    data = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    for _ in range(3):
        step(data)
    started = time.perf_counter()
    for _ in range(args.steps):
        float(step(data)["loss"])
    wall = (time.perf_counter() - started) / args.steps

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(args.steps):
            float(step(data)["loss"])
        tf.profiler.experimental.stop()
        xspace = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        table, ok = profiler_plugin.xspace_to_tools_data(xspace, "framework_op_stats")
    if not ok:
        raise SystemExit(f"the profiler returned no op statistics: {table[:200]!r}")
    data = json.loads(table)[0]  # a DataTable: one row per op, times in microseconds
    columns = [c["id"] for c in data["cols"]]
    by_kind: dict[str, float] = {}
    by_type: dict[str, float] = {}
    for row in data["rows"]:
        op = dict(zip(columns, (cell.get("v") for cell in row["c"])))
        if op["type"] == "IDLE":
            continue
        kind = kind_of(op["type"])
        ms = float(op["total_self_time"]) / 1000 / args.steps
        by_kind[kind] = by_kind.get(kind, 0.0) + ms
        by_type[op["type"]] = by_type.get(op["type"], 0.0) + ms
    traced = sum(by_kind.values())
    result = {"policy": policy, "batch": args.batch, "steps": args.steps, "step_ms": round(wall * 1000, 1),
              "images_per_s": round(args.batch / wall, 1), "op_ms_per_step": round(traced, 1),
              "kinds": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
              "top_op_types": {k: round(v, 1) for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:12]}}
    write_results("profile", result, context)
    print(f"\nbest recipe's network, batch {args.batch}, {policy}: {result['step_ms']:.0f} ms per step "
          f"({result['images_per_s']:.0f} images/s); op time traced {traced:.0f} ms per step "
          "(ops on two threads overlap)")
    print(f"{'kind':<36}{'ms/step':>9}{'share':>8}")
    for kind, ms in result["kinds"].items():
        print(f"{kind:<36}{ms:>9.1f}{ms / traced:>8.1%}")
    print("top op types (ms/step): " + ", ".join(f"{k} {v:.0f}" for k, v in result["top_op_types"].items()))


if __name__ == "__main__":
    sys.exit(main())
