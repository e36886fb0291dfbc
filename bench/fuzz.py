"""Fuzzed ingest inputs at volume: every case must end as images or quarantine rows, within a time and
memory budget per file.

Each case is a file of a supported format (PNG, JPEG, GIF, BMP, TIFF, WebP, tar, tar.gz, zip, a CIFAR batch,
a CSV or Parquet manifest): random bytes under that format's name, or a valid file with 1-6 random edits
(bytes overwritten or inserted, or the file cut short). Each is listed and ingested in this process as a run
would (``tests/fuzz_inputs.py``), under an address-space limit. The baseline is the same cases' seed files,
unmutated.

    python bench/fuzz.py [--cases 10000] [--seed 0] [--memory-mb 1024]

Writes bench/results/fuzz.json and prints a table per format.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from fuzz_inputs import FORMATS, IMAGE_FORMATS, mutate, run_case, seed  # noqa: E402
from record import run_context, write_results  # noqa: E402

CASE_SECONDS = 10.0


def case(rng: np.random.Generator) -> tuple[str, bytes]:
    """One fuzzed file: its format and bytes."""
    fmt = FORMATS[rng.integers(len(FORMATS))]
    if rng.random() < 0.2:
        return fmt, rng.bytes(int(rng.integers(0, 2048)))
    edits = [(("flip", "flip", "insert", "cut")[rng.integers(4)], int(rng.integers(0, 1 << 16)),
              rng.bytes(int(rng.integers(1, 17)))) for _ in range(int(rng.integers(1, 7)))]
    return fmt, mutate(seed(fmt), edits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-mb", type=int, default=1024, help="address space a case may add")
    args = parser.parse_args()
    context = run_context()

    workdir = Path(tempfile.mkdtemp(prefix="fusion-fuzz-"))
    for fmt in FORMATS:  # the baseline: every seed is a valid input (and warms up the decoders)
        ok = run_case(fmt, seed(fmt), workdir / "case")
        assert ok["quarantined"] == 0 and ok["images"] >= 1, f"seed {fmt} is not a valid input"
    limit = _address_space() + args.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))

    rng = np.random.default_rng(args.seed)
    per_format = defaultdict(lambda: {"cases": 0, "images": 0, "quarantined": 0, "lost": 0, "exceptions": 0,
                                      "over_time": 0, "max_s": 0.0})
    failures, started = [], time.perf_counter()
    for i in range(args.cases):
        fmt, data = case(rng)
        row = per_format[fmt]
        row["cases"] += 1
        try:
            outcome = run_case(fmt, data, workdir / "case")
        except (Exception, MemoryError) as err:
            row["exceptions"] += 1
            failures.append({"case": i, "format": fmt, "error": f"{type(err).__name__}: {err}",
                             "traceback": traceback.format_exc()[-2000:], "bytes": data[:256].hex()})
            continue
        row["images"] += outcome["images"]
        row["quarantined"] += outcome["quarantined"]
        row["lost"] += int(fmt in IMAGE_FORMATS and outcome["images"] + outcome["quarantined"] != 1)
        row["over_time"] += int(outcome["seconds"] > CASE_SECONDS)
        row["max_s"] = max(row["max_s"], round(outcome["seconds"], 3))
    result = {"cases": args.cases, "seed": args.seed, "memory_mb_per_case": args.memory_mb,
              "case_seconds_limit": CASE_SECONDS, "seconds": round(time.perf_counter() - started, 1),
              "per_format": dict(sorted(per_format.items())), "failures": failures[:50],
              "handled": sum(r["cases"] - r["exceptions"] - r["lost"] - r["over_time"] for r in per_format.values())}
    write_results("fuzz", result, context)
    _report(result)


def _address_space() -> int:
    """This process's virtual memory size now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _report(result: dict) -> None:
    print(f"{'format':<9}{'cases':>7}{'images':>8}{'quarant.':>10}{'lost':>6}{'exceptions':>12}{'>limit':>8}"
          f"{'max s':>8}")
    for fmt, r in result["per_format"].items():
        print(f"{fmt:<9}{r['cases']:>7}{r['images']:>8}{r['quarantined']:>10}{r['lost']:>6}{r['exceptions']:>12}"
              f"{r['over_time']:>8}{r['max_s']:>8.2f}")
    print(f"{result['handled']} of {result['cases']} cases handled (an image or a quarantine row, within "
          f"{result['case_seconds_limit']:.0f} s and {result['memory_mb_per_case']} MB) in {result['seconds']} s")
    for failure in result["failures"][:5]:
        print(f"case {failure['case']} ({failure['format']}): {failure['error']}")


if __name__ == "__main__":
    sys.exit(main())
