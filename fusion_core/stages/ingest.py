"""Ingest: a source -> the ``images`` dataset (Parquet shards) plus quarantine rows.

One pass per Ray task: each task reads its items, hashes them (the hash is the
image id), asks the catalog which of them it holds already, decodes the rest by
content (``fusion_core.data.decode``), and writes shards named from the ids they
hold. The driver lists the source (``fusion_core.data.sources``) and feeds tasks
as it goes, never holding the listing whole; archives are streamed, never extracted. Content that two tasks
both wrote (the same image under two paths) is dropped from the later shard
before the version is committed, in one transaction, with every path of every
image. Bad inputs become quarantine rows; the run goes on.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fusion_core.config import IngestConfig, Settings
from fusion_core.data.decode import QuarantineError, decode_image
from fusion_core.data.runs import StageResult
from fusion_core.data.sources import Item, iter_items, quarantine_row, read_bytes
from fusion_core.progress import Progress
from fusion_core.store import Store
from fusion_core.store.datasets import IMAGES_SCHEMA, delete_shard, pack_mask, read_shard, read_shards, write_shard

log = logging.getLogger(__name__)

SOURCES_SCHEMA = pa.schema([("image_id", pa.string()), ("source", pa.string())])


def split_for(image_id: str, val_fraction: float, test_fraction: float, given: str | None = None) -> str:
    """The split an image belongs to forever, derived from its content hash.

    A split the source gives is kept, except that ``train`` images go to ``val`` with
    probability ``val_fraction / (1 - test_fraction)``, so there is a validation split.
    """
    u = int(image_id[:8], 16) / 16**8
    if given == "train":
        return "val" if u < val_fraction / (1 - test_fraction) else "train"
    if given:
        return given
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


LOOKUP_ITEMS = 256  # items hashed before one catalog lookup of their ids ...
LOOKUP_BYTES = 64 * 2**20  # ... or fewer, when their bytes reach this


def ingest_chunk(root: str, items: list[Item], cfg: IngestConfig,
                 known_ids: Callable[[list[str]], set[str]] = lambda ids: set()) -> dict:
    """Read, hash, decode and write a chunk of items as shards (one pass).

    Items are hashed a few hundred at a time; ``known_ids`` is asked which of those ids the
    catalog holds already, and only the others are decoded.

    Args:
        root: store root; shards go to ``datasets/images/<hash of their ids>.parquet``.
        items: ``(source, label, payload, mask, split)`` tuples (see ``fusion_core.data.sources``).
        cfg: limits, split fractions and shard sizes.
        known_ids: which of a list of image ids are already stored; their items are only recorded as sources.

    Returns:
        ``{"shards": [{"path", "num_rows", "image_ids"}], "sources": [(image_id, source)],
        "quarantine": [rows]}``; ``sources`` holds every item that is or was stored.
    """
    max_bytes = int(cfg.max_file_mb * 2**20)
    rows: dict[str, list] = {name: [] for name in IMAGES_SCHEMA.names}
    shards, sources, bad, seen, size = [], [], [], set(), 0
    for batch in _hashed(items, max_bytes, bad):
        known = known_ids([image_id for _, image_id, _ in batch])
        for (source, label, payload, mask_ref, split), image_id, data in batch:
            if image_id in seen or image_id in known:
                sources.append((image_id, source))
                continue
            try:
                if isinstance(payload, np.ndarray):
                    pixels, mask = payload, None
                else:
                    mask_data = read_bytes(mask_ref, max_bytes) if isinstance(mask_ref, str) else mask_ref
                    pixels, mask = decode_image(data, cfg.max_pixels, mask_data)
            except QuarantineError as err:
                bad.append(quarantine_row(source, err.reason, str(err), image_id))
                continue
            except OSError as err:
                bad.append(quarantine_row(source, "unreadable", f"{type(err).__name__}: {err}", image_id))
                continue
            seen.add(image_id)
            sources.append((image_id, source))
            h, w, c = pixels.shape
            for name, value in zip(IMAGES_SCHEMA.names, (
                    image_id, source, label, split_for(image_id, cfg.val_fraction, cfg.test_fraction, split),
                    h, w, c, pixels.tobytes(), pack_mask(mask))):
                rows[name].append(value)
            size += h * w * c
            if len(rows["image_id"]) >= cfg.shard_rows or size >= cfg.shard_mb * 2**20:
                shards.append(_write_table(root, pa.table(rows, schema=IMAGES_SCHEMA), size, cfg))
                rows, size = {name: [] for name in IMAGES_SCHEMA.names}, 0
    if rows["image_id"]:
        shards.append(_write_table(root, pa.table(rows, schema=IMAGES_SCHEMA), size, cfg))
    return {"shards": shards, "sources": sources, "quarantine": bad}


def _hashed(items: list[Item], max_bytes: int, bad: list[dict]) -> Iterator[list[tuple[Item, str, bytes | None]]]:
    """Batches of ``(item, image id, encoded bytes)``, bounded in count and bytes; unreadable items are
    appended to ``bad`` as quarantine rows."""
    batch, held = [], 0
    for item in items:
        source, payload = item[0], item[2]
        try:
            if isinstance(payload, np.ndarray):
                data, image_id = None, hashlib.sha256(payload.tobytes()).hexdigest()
            else:
                data = read_bytes(payload, max_bytes) if isinstance(payload, str) else payload
                image_id = hashlib.sha256(data).hexdigest()
        except QuarantineError as err:
            bad.append(quarantine_row(source, err.reason, str(err)))
            continue
        except OSError as err:
            bad.append(quarantine_row(source, "unreadable", f"{type(err).__name__}: {err}"))
            continue
        batch.append((item, image_id, data))
        held += len(data or b"")
        if len(batch) >= LOOKUP_ITEMS or held >= LOOKUP_BYTES:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def ingest_task(root: str, db: str | None, items: list[Item], cfg: IngestConfig) -> tuple[dict, pa.Table]:
    """``ingest_chunk`` in a Ray task, asking the store's catalog which images it holds already.

    Returns what the driver keeps, compact (each shard's ids as 8-byte keys, the count of sources), and the
    ``{image_id, source}`` rows as a second object, which the driver spools to a local file as each task ends.
    """
    out = ingest_chunk(root, items, cfg, Store(root, db).known_image_ids)
    shards = [{"path": s["path"], "num_rows": s["num_rows"], "checksum": s["checksum"],
               "id_keys": id_keys(s["image_ids"])} for s in out["shards"]]
    ids, paths = zip(*out["sources"]) if out["sources"] else ((), ())
    sources = pa.table({"image_id": pa.array(ids, pa.string()), "source": pa.array(paths, pa.string())},
                       schema=SOURCES_SCHEMA)
    return {"shards": shards, "sources": len(out["sources"]), "quarantine": out["quarantine"]}, sources


def id_keys(image_ids: list[str]) -> np.ndarray:
    """The first 8 bytes of each hex image id, as uint64: a compact key under which ids stored twice are found
    (equal keys are then compared in full)."""
    return np.array([int(i[:16], 16) for i in image_ids], dtype=np.uint64)


def later_duplicates(shard_keys: list[np.ndarray], shard_ids: Callable[[int], list[str]]) -> dict[int, set[str]]:
    """For shards in order, the ids each holds that an earlier shard (or itself, earlier) holds too:
    ``{shard index: {hex id}}``.

    Sorts one array of 8-byte keys; only the shards holding a key seen twice are read back
    (``shard_ids(index)``: that shard's ids in order) to compare those rows' full ids.
    """
    if not shard_keys:
        return {}
    keys = np.concatenate(shard_keys)
    starts = np.cumsum([0] + [len(k) for k in shard_keys])
    order = np.argsort(keys, kind="stable")
    keys = keys[order]  # sorted; equal keys keep the shard order
    repeated = np.flatnonzero(keys[1:] == keys[:-1])
    rows = np.unique(np.concatenate([order[repeated], order[repeated + 1]]))  # in shard order, then row order
    del keys, order
    owners = np.searchsorted(starts, rows, side="right") - 1
    read, ids = None, []  # rows come shard by shard: one shard's ids are held at a time
    seen: set[str] = set()
    drops: dict[int, set[str]] = {}
    for row, owner in zip(rows.tolist(), owners.tolist()):
        if owner != read:
            read, ids = owner, shard_ids(owner)
        image_id = ids[row - starts[owner]]
        if image_id in seen:
            drops.setdefault(owner, set()).add(image_id)
        seen.add(image_id)
    return drops


def _write_table(root: str, table: pa.Table, size: int, cfg: IngestConfig) -> dict:
    """Write an images table as one shard named from its ids, with row groups of about ``row_group_mb``.

    Returns:
        Its manifest entry, with the ids it holds.
    """
    ids = table.column("image_id").to_pylist()
    name = hashlib.sha256("".join(ids).encode()).hexdigest()[:20]
    group = max(1, int(cfg.row_group_mb * 2**20 * len(ids) / max(size, 1)))
    entry = write_shard(root, f"datasets/images/{name}.parquet", table, row_group_size=group)
    return {**entry, "image_ids": ids}


def _drop_rows(root: str, shard: dict, drop: set[str], cfg: IngestConfig) -> dict | None:
    """Rewrite a shard without the rows of ``drop`` (content another task stored first)."""
    table = read_shards(root, [shard["path"]])
    keep = table.filter(pc.invert(pc.is_in(table.column("image_id"), pa.array(sorted(drop), pa.string()))))
    delete_shard(root, shard["path"])
    if keep.num_rows == 0:
        return None
    size = int(pc.sum(pc.binary_length(keep.column("pixels"))).as_py())
    return _write_table(root, keep, size, cfg)


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class SourceSpool:
    """The ``{image_id, source}`` rows of every task, appended to a local Arrow file as each task ends (so
    neither this process nor Ray's object store holds them all), and read back a batch at a time each time
    they are iterated."""

    def __init__(self, folder: str):
        self.path = f"{folder}/sources.arrow"
        self.writer = pa.ipc.new_file(self.path, SOURCES_SCHEMA)

    def append(self, rows: pa.Table) -> None:
        self.writer.write_table(rows)

    def close(self) -> None:
        self.writer.close()

    def __iter__(self) -> Iterator[dict]:
        with pa.OSFile(self.path) as source:  # read, not mapped: a mapped file's pages would stay in this process
            reader = pa.ipc.open_file(source)
            for index in range(reader.num_record_batches):
                yield from reader.get_batch(index).to_pylist()


def _run_tasks(ray, cfg: IngestConfig, store: Store, source: str, problems: list[dict],
               spool: SourceSpool) -> list[dict]:
    """Feed chunks of the source to Ray tasks as they are listed; their summaries in submission order.

    Each task's source rows go to ``spool`` as it ends, and no reference to its outputs is kept, so Ray
    frees the task's inputs and outputs at once."""
    task = ray.remote(ingest_task).options(num_returns=2)
    root, db = store.reopen_args()
    in_flight = 2 * int(ray.cluster_resources().get("CPU", 1)) + 2  # keeps workers busy, bounds memory
    results, pending, progress = [], {}, Progress("ingest", "files")

    def collect(wait_all: bool) -> None:
        while pending and (wait_all or len(pending) >= in_flight):
            ready, _ = ray.wait(list(pending), num_returns=1)
            index, n, sources = pending.pop(ready[0])
            results[index] = ray.get(ready[0])
            spool.append(ray.get(sources))
            progress.update(n)

    listed = 0  # the source is streamed, never held whole: the total (and an ETA) is known once it is listed
    items = iter_items(source, problems, int(cfg.max_file_mb * 2**20), cfg.manifest_paths_anywhere)
    for chunk in _chunks(items, cfg.files_per_task):
        collect(wait_all=False)
        results.append(None)
        summary, sources = task.remote(root, db, chunk, cfg)
        pending[summary] = (len(results) - 1, len(chunk), sources)
        listed += len(chunk)
    progress.total = listed
    collect(wait_all=True)
    progress.close()
    spool.close()
    return results


def ingest_source(settings: Settings, store: Store, source: str, run_id: str) -> StageResult:
    """Ingest every new image of ``source`` and commit a new ``images`` version.

    ``source`` is a folder, a tar / tar.gz / zip archive, a CIFAR batch
    directory or a CSV / Parquet manifest, as a path or URI. Rerunning on the
    same source adds nothing; content already stored under another path only
    has the new path recorded.
    """
    from fusion_core.ray_runtime import ensure_ray

    cfg = settings.ingest
    ray = ensure_ray(settings)
    problems: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fusion-ingest-") as spool_folder:
        sources = SourceSpool(spool_folder)  # the catalog keeps the new ones, with the version
        results = _run_tasks(ray, cfg, store, str(source), problems, sources)
        return _commit(store, source, run_id, results, problems, sources, cfg)


def _commit(store: Store, source: str, run_id: str, results: list[dict], problems: list[dict],
            sources: SourceSpool, cfg: IngestConfig) -> StageResult:
    """Drop content two tasks both wrote from the later shard, then commit the new version with every source
    row and record the quarantine."""
    written = [shard for result in results for shard in result["shards"]]
    drops = later_duplicates([shard.pop("id_keys") for shard in written], lambda index: read_shard(
        store.root, written[index]["path"], columns=["image_id"]).column("image_id").to_pylist())
    shards = []
    for index, shard in enumerate(written):
        if index in drops:
            log.info("ingest: %d images in %s were also stored by another task", len(drops[index]), shard["path"])
            shard = _drop_rows(store.root, shard, drops[index], cfg)
        if shard:
            shards.append({k: shard[k] for k in ("path", "num_rows", "checksum")})
    quarantined = problems + [q for r in results for q in r["quarantine"]]

    previous = store.latest_version("images")
    version = previous["version"] if previous else None
    if shards:
        manifest = (previous["shards"] if previous else []) + shards
        version = store.commit_version("images", manifest, run_id, sources=sources, info={"source": str(source)})
    else:
        store.record_sources(sources, run_id)
    new_quarantine = store.add_quarantine(run_id, quarantined)
    reasons = Counter(q["error_class"] for q in quarantined)
    added = sum(s["num_rows"] for s in shards)
    ok = sum(r["sources"] for r in results)
    total = store.get_version("images", version)
    log.info("ingest: %d files, %d ok (%d new images, %d already stored), %d quarantined %s",
             ok + len(quarantined), ok, added, ok - added, len(quarantined), dict(reasons))
    return StageResult(
        "ingest",
        counts={"files": ok + len(quarantined), "images_ok": ok, "new_images": added,
                "already_stored": ok - added, "quarantined": len(quarantined),
                "new_quarantine_rows": new_quarantine, "quarantine_reasons": dict(sorted(reasons.items())),
                "total_images": total["num_rows"] if total else 0},
        outputs={"dataset": "images", "version": version, "new_shards": [s["path"] for s in shards]},
    )
