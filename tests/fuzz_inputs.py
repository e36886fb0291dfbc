"""Fuzzed ingest inputs, shared by ``tests/test_fuzz.py`` (a few hundred cases) and ``bench/fuzz.py`` (ten
thousand): valid seed files of every supported format, mutations of them and random bytes, and one case run
through the source readers and the ingest task as a run would."""

from __future__ import annotations

import io
import pickle
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fusion_core.config import IngestConfig
from fusion_core.data.sources import iter_items
from fusion_core.stages.ingest import ingest_chunk

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "bmp": "BMP", "tif": "TIFF", "webp": "WEBP"}
FORMATS = (*IMAGE_FORMATS, "tar", "tar.gz", "zip", "cifar", "csv", "parquet")
CONFIG = IngestConfig(max_pixels=4_000_000, max_file_mb=8)  # decompression bombs are refused, not decoded


def _image(fmt: str, seed: int = 0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, IMAGE_FORMATS[fmt])
    return out.getvalue()


def _tar(gz: bool) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gz else "w") as tar:
        for name, data in (("src/cat/a.png", _image("png")), ("src/dog/b.jpg", _image("jpg", 1))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("src/cat/a.png", _image("png"))
        zf.writestr("src/dog/b.gif", _image("gif", 1))
    return out.getvalue()


def _cifar_batch() -> bytes:
    data = np.random.default_rng(0).integers(0, 256, (2, 3072), dtype=np.uint8)
    return pickle.dumps({b"data": data, b"labels": [0, 1]})


def _parquet_manifest() -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table({"path": ["a.png", "b.png"], "label": ["x", None], "split": ["train", "test"]}), out)
    return out.getvalue()


def seed(fmt: str) -> bytes:
    """A valid file of ``fmt``: what mutations start from."""
    if fmt in IMAGE_FORMATS:
        return _image(fmt)
    return {"tar": lambda: _tar(False), "tar.gz": lambda: _tar(True), "zip": _zip, "cifar": _cifar_batch,
            "csv": lambda: b"path,label,split\na.png,x,train\nb.png,,test\n", "parquet": _parquet_manifest}[fmt]()


def mutate(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    """Apply ``(op, position, bytes)`` edits: ``flip`` overwrites, ``insert`` inserts, ``cut`` truncates."""
    out = bytearray(data)
    for op, pos, chunk in edits:
        pos = pos % (len(out) + 1)
        if op == "flip":
            out[pos:pos + len(chunk)] = chunk
        elif op == "insert":
            out[pos:pos] = chunk
        else:
            del out[pos:]
    return bytes(out)


def layout(fmt: str, data: bytes, workdir: Path) -> str:
    """Put ``data`` where a source of ``fmt`` reads it; returns the source to ingest."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    if fmt in IMAGE_FORMATS:
        (workdir / "src" / "cat").mkdir(parents=True)
        (workdir / "src" / "cat" / f"x.{fmt}").write_bytes(data)
        return str(workdir / "src")
    if fmt == "cifar":
        (workdir / "cifar").mkdir()
        (workdir / "cifar" / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"cat", b"dog"]}))
        (workdir / "cifar" / "data_batch_1").write_bytes(data)
        return str(workdir / "cifar")
    if fmt in ("csv", "parquet"):
        for i, name in enumerate(("a.png", "b.png")):
            (workdir / name).write_bytes(_image("png", i))
    path = workdir / f"src.{fmt}"
    path.write_bytes(data)
    return str(path)


def run_case(fmt: str, data: bytes, workdir: Path) -> dict:
    """List and ingest one fuzzed source as a run would; an exception out of here is a bug.

    Returns:
        ``{"images", "quarantined", "seconds"}``.
    """
    started = time.perf_counter()
    source = layout(fmt, data, workdir)
    problems: list[dict] = []
    items = list(iter_items(source, problems, int(CONFIG.max_file_mb * 2**20)))
    out = ingest_chunk(str(workdir / "store"), items, CONFIG)
    return {"images": len(out["sources"]), "quarantined": len(problems) + len(out["quarantine"]),
            "seconds": time.perf_counter() - started}
