"""Source kinds (fusion_core.data.sources), each built as a real file or folder in tmp_path; no Ray."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import zipfile

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusion_core.config import IngestConfig
from fusion_core.data.decode import decode_image
from fusion_core.data.sources import iter_items, read_bytes, source_kind
from fusion_core.data.sources.safe_pickle import load_pickle
from fusion_core.stages.ingest import ingest_chunk

MAX = 10_000_000


def _rgb(h=4, w=5, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _items(source, max_bytes=2**31):
    problems = []
    items = list(iter_items(str(source), problems, max_bytes))
    return items, problems


def _reasons(problems):
    return sorted((os.path.basename(p["source"]), p["error_class"]) for p in problems)


def _payload_pixels(item):
    payload = item[2]
    if isinstance(payload, np.ndarray):
        return payload
    data = read_bytes(payload) if isinstance(payload, str) else payload
    return decode_image(data, MAX)[0]


# folders -----------------------------------------------------------------------------------

def test_folder_labels_nesting_hidden_and_sibling_masks(tmp_path, png):
    for rel in ("cat/a.png", "cat/deep/er/c.png", "dog/z.png", "root.png", ".hidden.png", "cat/.DS_Store",
                ".git/x.png", "dog/z.mask.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(png(_rgb()))
    items, problems = _items(tmp_path)
    assert problems == []
    assert source_kind(str(tmp_path)) == "folder"
    assert items == [
        (str(tmp_path / "cat/a.png"), "cat", str(tmp_path / "cat/a.png"), None, None),
        (str(tmp_path / "cat/deep/er/c.png"), "cat", str(tmp_path / "cat/deep/er/c.png"), None, None),
        (str(tmp_path / "dog/z.png"), "dog", str(tmp_path / "dog/z.png"), str(tmp_path / "dog/z.mask.png"), None),
        (str(tmp_path / "root.png"), None, str(tmp_path / "root.png"), None, None),
    ]


@pytest.mark.parametrize("uri", [False, True])
def test_folder_of_split_folders_gives_split_and_label_below(tmp_path, uri, png):
    for rel in ("train/cat/a.png", "train/cat/a.mask.png", "train/dog/deep/b.png", "Validation/cat/c.png",
                "valid/top.png", "TEST/dog/d.png", "val/.hidden.png", ".DS_Store"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(png(_rgb()))
    root = f"file://{tmp_path}" if uri else str(tmp_path)
    items, problems = _items(root)
    assert problems == []
    assert [(s.replace(root, ""), label, split) for s, label, _, _, split in items] == [
        ("/TEST/dog/d.png", "dog", "test"), ("/Validation/cat/c.png", "cat", "val"),
        ("/train/cat/a.png", "cat", "train"), ("/train/dog/deep/b.png", "dog", "train"),
        ("/valid/top.png", None, "val")]
    assert items[2][3] == f"{root}/train/cat/a.mask.png"


@pytest.mark.parametrize("other", ["cats/a.png", "top.png"])
def test_folder_with_split_and_other_entries_keeps_first_level_labels(tmp_path, other, png):
    for rel in ("train/cat/a.png", "test/cat/b.png", other):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(png(_rgb()))
    items, problems = _items(tmp_path)
    assert problems == []
    assert {(s.replace(str(tmp_path), ""), label, split) for s, label, _, _, split in items} == {
        ("/train/cat/a.png", "train", None), ("/test/cat/b.png", "test", None),
        (f"/{other}", "cats" if "/" in other else None, None)}


def test_folder_follows_symlinked_folders_and_quarantines_loops(tmp_path, png):
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    (src / "cat" / "a.png").write_bytes(png(_rgb()))
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "b.png").write_bytes(png(_rgb(seed=1)))
    (src / "dog").symlink_to(other)                    # followed
    (src / "cat" / "loop").symlink_to(src)             # back to an ancestor: a loop
    (src / "self.png").symlink_to(src / "self.png")    # a link to itself
    items, problems = _items(src)
    assert [(s.replace(str(src), ""), label) for s, label, *_ in items] == [("/cat/a.png", "cat"),
                                                                           ("/dog/b.png", "dog")]
    assert _reasons(problems) == [("loop", "symlink_loop"), ("self.png", "symlink_loop")]


def test_folder_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        _items(tmp_path / "missing")


# archives ---------------------------------------------------------------------------------------

def _archive_members(png):
    return {"train/cat/a.png": png(_rgb(seed=1)), "train/dog/b.png": png(_rgb(seed=2)),
            "train/top.png": png(_rgb(seed=3)), "train/.hidden/x.png": b"x"}


@pytest.mark.parametrize("suffix", ["tar", "tar.gz", "zip"])
def test_archives_are_streamed_with_labels_and_unsafe_members_quarantined(tmp_path, suffix, monkeypatch, png):
    members = _archive_members(png)
    path = tmp_path / f"train.{suffix}"
    evil = {"../evil.png": png(_rgb(seed=9)), "/abs/evil.png": png(_rgb(seed=9))}
    if suffix == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in {**members, **evil}.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz" if suffix == "tar.gz" else "w") as tf:
            for name, data in {**members, **evil}.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            link = tarfile.TarInfo("train/cat/link.png")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(link)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    items, problems = _items(path)
    assert source_kind(str(path)) == "archive"
    assert [(s, label, split) for s, label, _, _, split in items] == [(f"{path}!/train/cat/a.png", "cat", None),
                                                                      (f"{path}!/train/dog/b.png", "dog", None),
                                                                      (f"{path}!/train/top.png", None, None)]
    for item, name in zip(items, ("train/cat/a.png", "train/dog/b.png", "train/top.png")):
        assert item[2] == members[name]  # member bytes, in memory
    expected = [("evil.png", "unsafe_path"), ("evil.png", "unsafe_path")]
    if suffix != "zip":
        expected.append(("link.png", "unsafe_path"))
    assert _reasons(problems) == sorted(expected)
    assert list(work.iterdir()) == [] and not (tmp_path / "evil.png").exists()  # nothing extracted


def test_archive_member_larger_than_limit_is_quarantined_unread(tmp_path, png):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.png", b"\0" * 100_000)
        zf.writestr("ok.png", png(_rgb()))
    items, problems = _items(path, max_bytes=50_000)
    assert [s for s, *_ in items] == [f"{path}!/ok.png"]
    assert _reasons(problems) == [("big.png", "too_large")]


@pytest.mark.parametrize("suffix", ["tar.gz", "zip"])
@pytest.mark.parametrize("top", ["data/", ""])
def test_archive_split_folders_below_the_top_folder(tmp_path, suffix, top, png):
    members = {f"{top}{rel}": png(_rgb(seed=i)) for i, rel in enumerate(
        ("train/cat/a.png", "Valid/dog/b.png", "test/cat/c.png", "test/d.png", "train"))}
    path = tmp_path / f"data.{suffix}"
    if suffix == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    items, problems = _items(path)
    assert problems == []
    assert [(s, label, split) for s, label, _, _, split in items] == [
        (f"{path}!/{top}train/cat/a.png", "cat", "train"), (f"{path}!/{top}Valid/dog/b.png", "dog", "val"),
        (f"{path}!/{top}test/cat/c.png", "cat", "test"), (f"{path}!/{top}test/d.png", None, "test"),
        (f"{path}!/{top}train", None, None)]  # a file named like a split is no split folder


# CIFAR ------------------------------------------------------------------------------------------

def _cifar_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _rows(images):
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_python_batches(tmp_path, variant):
    images = _cifar_images(5, seed=1)
    labels = [0, 1, 2, 1, 0]
    if variant == "cifar10":
        meta, batches = ("batches.meta", {b"label_names": [b"plane", b"car", b"bird"]}), ["data_batch_1", "test_batch"]
        label_key = b"labels"
    else:
        meta, batches = ("meta", {b"fine_label_names": [b"apple", b"bee", b"cup"],
                                  b"coarse_label_names": [b"x"]}), ["train", "test"]
        label_key = b"fine_labels"
    (tmp_path / meta[0]).write_bytes(pickle.dumps(meta[1], protocol=2))
    (tmp_path / batches[0]).write_bytes(pickle.dumps({b"data": _rows(images[:3]), label_key: labels[:3],
                                                      b"filenames": [b"a", b"b", b"c"]}, protocol=2))
    (tmp_path / batches[1]).write_bytes(pickle.dumps({"data": _rows(images[3:]), label_key.decode(): labels[3:]},
                                                     protocol=4))
    items, problems = _items(tmp_path)
    assert problems == [] and source_kind(str(tmp_path)) == "cifar"
    names = meta[1][b"label_names" if variant == "cifar10" else b"fine_label_names"]
    by_source = {s: (label, p, split) for s, label, p, _, split in items}
    order = [f"{tmp_path / batches[0]}#{i}" for i in range(3)] + [f"{tmp_path / batches[1]}#{i}" for i in range(2)]
    assert sorted(by_source) == sorted(order)
    for k, source in enumerate(order):
        label, pixels, split = by_source[source]
        assert label == names[labels[k]].decode()
        np.testing.assert_array_equal(pixels, images[k])
        assert split == ("train" if k < 3 else "test")


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_binary_batches(tmp_path, variant):
    images = _cifar_images(4, seed=2)
    fine = np.array([3, 0, 2, 1], dtype=np.uint8)
    if variant == "cifar10":
        (tmp_path / "batches.meta.txt").write_text("a\nb\nc\nd\n\n")
        records = np.concatenate([fine[:, None], _rows(images)], axis=1)
        name = "data_batch_1.bin"
    else:
        (tmp_path / "fine_label_names.txt").write_text("a\nb\nc\nd\n")
        coarse = np.full((4, 1), 7, dtype=np.uint8)
        records = np.concatenate([coarse, fine[:, None], _rows(images)], axis=1)
        name = "train.bin"
    (tmp_path / name).write_bytes(records.tobytes())
    test_name = "test_batch.bin" if variant == "cifar10" else "test.bin"
    (tmp_path / test_name).write_bytes(records[:1].tobytes())
    (tmp_path / "short.bin").write_bytes(b"\1" * 100)
    items, problems = _items(tmp_path)
    by_source = {os.path.basename(s): (label, p, split) for s, label, p, _, split in items}
    assert sorted(by_source) == sorted([f"{name}#{i}" for i in range(4)] + [f"{test_name}#0"])
    for i, img in enumerate(images):
        label, pixels, split = by_source[f"{name}#{i}"]
        assert (label, split) == ("dacb"[i], "train")
        np.testing.assert_array_equal(pixels, img)
    assert by_source[f"{test_name}#0"][::2] == ("d", "test")
    assert [p["error_class"] for p in problems] == ["decode_error"]  # the short batch


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {EVIL_MARK}",))


EVIL_MARK = "/tmp/fusion-test-evil-pickle-ran"


def test_cifar_python_batch_with_arbitrary_classes_is_never_unpickled(tmp_path):
    if os.path.exists(EVIL_MARK):
        os.remove(EVIL_MARK)
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"]}, protocol=2))
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps({b"data": _rows(_cifar_images(1, 3)),
                                                          b"labels": [0]}, protocol=2))
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.array([object()] * 3072)[None],
                                                        b"labels": [0]}, protocol=2))
    items, problems = _items(tmp_path)
    assert not os.path.exists(EVIL_MARK)
    assert [s.rsplit("/", 1)[1] for s, *_ in items] == ["data_batch_2#0"]
    assert _reasons(problems) == [("data_batch_1", "unsafe_pickle"), ("test_batch", "unsafe_pickle")]
    assert all(len(p["content_hash"]) == 64 for p in problems)


def test_load_pickle_accepts_plain_data_only():
    plain = {b"a": [1, 2.5, "s", b"b", (3,)], "arr": np.arange(6, dtype=np.int32).reshape(2, 3)}
    out = load_pickle(pickle.dumps(plain, protocol=2))
    np.testing.assert_array_equal(out["arr"], plain["arr"])
    assert out[b"a"] == plain[b"a"]
    with pytest.raises(pickle.UnpicklingError):
        load_pickle(pickle.dumps({"x": Evil()}))


# manifests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest_with_labels_and_mask_column(tmp_path, fmt, png):
    (tmp_path / "img").mkdir()
    rgb = _rgb(3, 4, seed=5)
    (tmp_path / "img" / "a.png").write_bytes(png(rgb))
    (tmp_path / "img" / "b.png").write_bytes(png(_rgb(seed=6)))
    mask = np.zeros((3, 4), dtype=np.uint8)
    mask[1, 2] = 255
    (tmp_path / "img" / "a-mask.png").write_bytes(png(mask, "L"))
    table = pa.table({"path": ["img/a.png", str(tmp_path / "img" / "b.png")], "label": ["x", None],
                      "mask": ["img/a-mask.png", None]})
    path = tmp_path / f"manifest.{fmt}"
    if fmt == "csv":
        path.write_text("path,label,mask\nimg/a.png,x,img/a-mask.png\n" + f"{tmp_path / 'img' / 'b.png'},,\n")
    else:
        pq.write_table(table, path)
    items, problems = _items(path)
    assert problems == [] and source_kind(str(path)) == "manifest"
    a = str(tmp_path / "img" / "a.png")
    assert items[0] == (a, "x", a, str(tmp_path / "img" / "a-mask.png"), None)
    assert items[1][1] is None and items[1][3] is None
    result = ingest_chunk(str(tmp_path / "store"), items, IngestConfig())
    rows = pq.read_table(tmp_path / "store" / result["shards"][0]["path"]).to_pylist()
    from fusion_core.store.datasets import unpack_mask

    np.testing.assert_array_equal(unpack_mask(rows[0]["mask"], 3, 4), mask > 0)
    assert rows[1]["mask"] is None


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest_split_column_and_invalid_split_quarantined(tmp_path, fmt, png):
    names = ["a", "b", "c", "d", "e"]
    for n in names:
        (tmp_path / f"{n}.png").write_bytes(png(_rgb(seed=ord(n))))
    splits = ["train", "Validation", "TEST", None, "holdout"]
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        path.write_text("path,split\n" + "".join(f"{n}.png,{s or ''}\n" for n, s in zip(names, splits)))
    else:
        pq.write_table(pa.table({"path": [f"{n}.png" for n in names], "split": splits}), path)
    items, problems = _items(path)
    assert [(os.path.basename(s), split) for s, _, _, _, split in items] == [
        ("a.png", "train"), ("b.png", "val"), ("c.png", "test"), ("d.png", None)]
    (row,) = problems
    assert (row["source"], row["error_class"]) == (f"{path}#4", "bad_split")
    assert "'holdout'" in row["message"] and all(s in row["message"] for s in ("train", "val", "test"))


@pytest.mark.parametrize("content, words", [
    (b"file,label\na.png,x\n", "no 'path' column (columns: file, label)"),
    (b'path,label\n"a.png,x\n', "ArrowInvalid"),
    (b"\xff\xfe\x00garbage", "not a readable manifest"),
])
def test_an_unreadable_manifest_is_quarantined(tmp_path, content, words):
    (tmp_path / "m.csv").write_bytes(content)
    items, problems = _items(tmp_path / "m.csv")
    assert items == [] and [p["error_class"] for p in problems] == ["bad_manifest"]
    assert words in problems[0]["message"]


def test_manifest_paths_outside_its_folder_are_refused_unless_allowed(tmp_path, png):
    (tmp_path / "data").mkdir()
    for name in ("in.png", "../out.png"):
        (tmp_path / "data" / name).write_bytes(png(_rgb(seed=len(name))))
    (tmp_path / "data" / "link.png").symlink_to(tmp_path / "out.png")
    rows = ["in.png", "../out.png", str(tmp_path / "out.png"), "link.png", "sub/../in.png"]
    path = tmp_path / "data" / "m.csv"
    path.write_text("path\n" + "".join(f"{r}\n" for r in rows))
    items, problems = _items(path)
    assert [os.path.basename(i[0]) for i in items] == ["in.png", "in.png"]
    assert [p["source"] for p in problems] == [f"{path}#1", f"{path}#2", f"{path}#3"]
    assert {p["error_class"] for p in problems} == {"outside_manifest"}
    assert "ingest.manifest_paths_anywhere=true" in problems[0]["message"]
    allowed = list(iter_items(str(path), problems := [], manifest_paths_anywhere=True))
    assert len(allowed) == 5 and problems == []


# URIs -------------------------------------------------------------------------------------------

def test_file_uri_folder_archive_and_manifest(tmp_path, png):
    (tmp_path / "src" / "cat").mkdir(parents=True)
    rgb = _rgb(seed=7)
    (tmp_path / "src" / "cat" / "a.png").write_bytes(png(rgb))
    items, problems = _items(f"file://{tmp_path / 'src'}")
    assert problems == [] and [(s, label) for s, label, *_ in items] == [(f"file://{tmp_path}/src/cat/a.png", "cat")]
    np.testing.assert_array_equal(_payload_pixels(items[0]), rgb)

    with zipfile.ZipFile(tmp_path / "src.zip", "w") as zf:
        zf.writestr("src/cat/a.png", png(rgb))
    items, _ = _items(f"file://{tmp_path / 'src.zip'}")
    assert [label for _, label, *_ in items] == ["cat"]
    np.testing.assert_array_equal(_payload_pixels(items[0]), rgb)

    (tmp_path / "m.csv").write_text("path,label\nsrc/cat/a.png,c\n")
    items, _ = _items(f"file://{tmp_path / 'm.csv'}")
    assert items[0][2] == f"file://{tmp_path}/src/cat/a.png"
    np.testing.assert_array_equal(_payload_pixels(items[0]), rgb)


def test_fsspec_only_protocol(tmp_path, png):
    fs = fsspec.filesystem("memory")
    rgb = _rgb(seed=8)
    fs.pipe("/fusion-test/src/dog/b.png", png(rgb))
    try:
        items, problems = _items("memory://fusion-test/src")
        assert problems == [] and [label for _, label, *_ in items] == ["dog"]
        np.testing.assert_array_equal(_payload_pixels(items[0]), rgb)
    finally:
        fs.rm("/fusion-test", recursive=True)


# permissions ----------------------------------------------------------------------------------------

def test_unreadable_file_is_quarantined(tmp_path, png):
    """A file without read permission, read as an unprivileged user (root reads everything) in a forked child."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(_rgb(seed=1)))
    secret.chmod(0o000)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root, read both files
        code = 1
        try:
            if os.getuid() == 0:
                os.setuid(65534)
            out = ingest_chunk(str(tmp_path / "store"), [(str(secret), None, str(secret), None, None)], IngestConfig())
            os.write(write_fd, json.dumps([[q["source"], q["error_class"]] for q in out["quarantine"]]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_fd) as fh:
        reported = json.loads(fh.read() or "null")
    assert os.waitstatus_to_exitcode(status) == 0
    assert reported == [[str(secret), "unreadable"]]


def test_folder_items_come_in_sorted_path_order_one_directory_listed_at_a_time(tmp_path, png, monkeypatch):
    """Whole paths in sorted order (``a.png`` < ``a/`` < ``a0/``, as the strings sort), and the first item comes
    before the last folder is listed: the listing is never held whole."""
    import os

    src = tmp_path / "src"
    for rel in ("a/x.png", "a.png", "a0/y.png", "b/c/z.png", "b/c.png", "d/w.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(png(_rgb()))
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listed.append(str(path)) or real_scandir(path))
    items = iter_items(str(src), [], 2**31)
    first = next(items)
    assert first[0] == str(src / "a.png") and not any(p.rstrip("/").endswith("/d") for p in listed)
    rest = [first[0], *(item[0] for item in items)]
    assert [r.replace(str(src) + "/", "") for r in rest] == sorted(
        ["a/x.png", "a.png", "a0/y.png", "b/c/z.png", "b/c.png", "d/w.png"])
