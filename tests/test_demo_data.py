"""Tests for fusion_core.demo_data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusion_core.demo_data import CLASSES, DemoSummary, generate_demo_images

PER_CLASS = 12
MISSING = 0.25  # -> 3 RGBA images per class
CORRUPT = 5


def _generate(root: Path, seed: int = 0) -> DemoSummary:
    return generate_demo_images(root, per_class=PER_CLASS, seed=seed,
                                missing_fraction=MISSING, corrupt=CORRUPT)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _valid(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("corrupt-")]


def _corrupt(root: Path) -> list[Path]:
    return sorted(root.rglob("corrupt-*"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoSummary]:
    root = tmp_path_factory.mktemp("demo")
    return root, _generate(root)


def test_summary_and_file_counts(demo):
    root, summary = demo
    assert summary == DemoSummary(root=str(root), images=PER_CLASS * len(CLASSES),
                                  with_missing=3 * len(CLASSES), corrupt=CORRUPT)
    assert sorted(p.name for p in root.iterdir()) == sorted(CLASSES)
    for name in CLASSES:
        files = [p for p in (root / name).iterdir() if not p.name.startswith("corrupt-")]
        assert sorted(p.stem for p in files) == [f"{name}-{i:04d}" for i in range(PER_CLASS)]
        assert {p.suffix for p in files} == {".png", ".jpg"}
    assert len(_valid(root)) == summary.images
    corrupt = _corrupt(root)
    assert len(corrupt) == CORRUPT
    assert len({p.parent.name for p in corrupt}) == CORRUPT  # spread over classes
    sizes = {(p.suffix, p.stat().st_size) for p in corrupt}
    assert (".png", 0) in sizes and (".png", 40) in sizes
    assert any(p.suffix == ".jpg" and p.read_bytes().startswith(b"not an image")
               for p in corrupt)


def test_same_seed_is_byte_identical(demo, tmp_path):
    root, _ = demo
    _generate(tmp_path / "again")
    assert _snapshot(root) == _snapshot(tmp_path / "again")


def test_rerun_on_existing_root_is_idempotent(tmp_path):
    _generate(tmp_path)
    first = _snapshot(tmp_path)
    _generate(tmp_path)
    assert _snapshot(tmp_path) == first


def test_different_seed_differs(demo, tmp_path):
    root, _ = demo
    _generate(tmp_path, seed=1)
    a, b = _snapshot(root), _snapshot(tmp_path)
    common = [k for k in a if k in b and not k.rsplit("/", 1)[-1].startswith("corrupt-")]
    assert common
    assert all(a[k] != b[k] for k in common)


def test_valid_files_decode_to_expected_size(demo):
    root, _ = demo
    for path in _valid(root):
        with Image.open(path) as img:
            img.load()
            assert img.size == (32, 32)
            assert img.format == ("JPEG" if path.suffix == ".jpg" else "PNG")
            assert img.mode in ("RGB", "RGBA")
            assert img.mode == "RGB" or img.format == "PNG"


def test_rgba_files_have_transparent_missing_region(demo):
    root, _ = demo
    for name in CLASSES:
        rgba = []
        for path in _valid(root / name):
            with Image.open(path) as img:
                if img.mode == "RGBA":
                    rgba.append(np.asarray(img))
        assert len(rgba) == 3
        for arr in rgba:
            alpha = arr[..., 3]
            assert set(np.unique(alpha).tolist()) == {0, 255}
            ys, xs = np.nonzero(alpha == 0)
            h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
            assert h * w == ys.size  # one solid rectangle
            assert 4 <= h <= 12 and 4 <= w <= 12
            assert not arr[alpha == 0][:, :3].any()  # RGB under the hole is 0


def test_corrupt_files_fail_to_decode(demo):
    root, _ = demo
    for path in _corrupt(root):
        with pytest.raises(OSError):  # UnidentifiedImageError is an OSError
            with Image.open(path) as img:
                img.load()


def test_size_parameter(tmp_path):
    summary = generate_demo_images(tmp_path, per_class=2, missing_fraction=0.5,
                                   corrupt=0, size=16)
    assert summary.images == 20 and summary.with_missing == 10 and summary.corrupt == 0
    for path in _valid(tmp_path):
        with Image.open(path) as img:
            assert img.size == (16, 16)


@pytest.mark.parametrize("kwargs", [{"per_class": -1}, {"corrupt": -1}, {"size": 8},
                                    {"missing_fraction": 1.5}])
def test_invalid_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_demo_images(tmp_path, **kwargs)
