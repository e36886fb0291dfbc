"""Fuzzed inputs of every supported format end as images or quarantine rows: never an exception, a hang or a
single-file case that vanishes (a few hundred cases here; ``bench/fuzz.py`` runs ten thousand)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_inputs import CONFIG, FORMATS, IMAGE_FORMATS, layout, mutate, run_case, seed
from fusion_core.data.sources import iter_items
from fusion_core.stages.ingest import ingest_chunk

EDIT = st.tuples(st.sampled_from(["flip", "flip", "insert", "cut"]), st.integers(0, 4096),
                 st.binary(min_size=1, max_size=16))
CASE = st.one_of(
    st.tuples(st.sampled_from(FORMATS), st.binary(max_size=512)),  # random bytes named like the format
    st.tuples(st.sampled_from(FORMATS), st.lists(EDIT, min_size=1, max_size=6)).map(
        lambda fe: (fe[0], mutate(seed(fe[0]), fe[1]))),
)
CASE_SECONDS = 10  # the per-file time limit a case must stay within


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=CASE)
def test_fuzzed_inputs_end_as_images_or_quarantine_rows(case):
    fmt, data = case
    with tempfile.TemporaryDirectory() as workdir:
        outcome = run_case(fmt, data, Path(workdir))
    assert outcome["seconds"] < CASE_SECONDS
    if fmt in IMAGE_FORMATS:  # one file in, one image or one quarantine row out
        assert outcome["images"] + outcome["quarantined"] == 1


def test_every_seed_is_a_valid_input(tmp_path):
    for fmt in FORMATS:
        outcome = run_case(fmt, seed(fmt), tmp_path / fmt)
        assert outcome["quarantined"] == 0 and outcome["images"] >= 1, fmt


def _zip_needing_version(version: int) -> bytes:
    """The seed zip, its central directory saying the members need zip ``version`` to extract."""
    data = bytearray(seed("zip"))
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        data[at + 6:at + 8] = version.to_bytes(2, "little")
        at = data.find(b"PK\x01\x02", at + 4)
    return bytes(data)


def _parquet_with_bad_utf8() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.table({"path": pa.array([b"\x80a.png"], pa.binary()).cast(pa.string(), safe=False)}), out)
    return out.getvalue()


# Inputs the fuzzing found raising out of ingest; each now ends as a quarantine row with this reason.
FOUND = {
    "empty tar": ("tar", lambda: b"", "bad_archive"),
    "tar header cut short": ("tar", lambda: seed("tar")[:100], "bad_archive"),
    "gzip header cut short": ("tar.gz", lambda: b"\x1f\x8b\x08", "bad_archive"),
    "zip of an unknown version": ("zip", lambda: _zip_needing_version(205), "bad_archive"),
    "pickle bytes beyond any size": ("cifar", lambda: b"\x80\x04\x8e" + (2**63).to_bytes(8, "little"),
                                     "decode_error"),
    "pickle bytes beyond memory": ("cifar", lambda: b"\x80\x04\x8e" + (2**44).to_bytes(8, "little"),
                                   "decode_error"),
    "pickle items added to an array": ("cifar", lambda: b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n"
                                                        b"cnumpy\nndarray\nK\x00\x85C\x01b\x87R(K\x01\x90.",
                                       "decode_error"),
    "manifest text not in UTF-8": ("parquet", _parquet_with_bad_utf8, "bad_manifest"),
    "manifest path with a NUL byte": ("csv", lambda: b"path\na\x00.png\n", "unreadable"),
}


@pytest.mark.parametrize("name", FOUND)
def test_inputs_the_fuzzing_found(tmp_path, name):
    fmt, build, reason = FOUND[name]
    source = layout(fmt, build(), tmp_path / "case")
    problems = []
    items = list(iter_items(source, problems, 2**20))
    out = ingest_chunk(str(tmp_path / "store"), items, CONFIG)
    assert reason in [p["error_class"] for p in problems + out["quarantine"]], (problems, out["quarantine"])
