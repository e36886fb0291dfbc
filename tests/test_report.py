"""The run report: plotting and HTML helpers on synthetic data, the report of a hand-built store,
and the nightly flow's report rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from conftest import skip_or_fail
from fusion_core.stages.report import page, plots, sections, write_report
from fusion_core.store import Store
from fusion_core.store.datasets import IMAGES_SCHEMA, array_to_fixed_list, array_to_pixels, pixels_schema, write_shard
from fusion_core.tools.fsck import check_store

PNG = b"\x89PNG\r\n\x1a\n"
CLASSES = ["circle", "square", "stripes"]


def _image_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_pca_2d_finds_the_direction_of_largest_spread():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)) * [10.0, 0.1, 0.1, 0.1, 3.0]
    xy = plots.pca_2d(x)
    assert xy.shape == (400, 2)
    assert abs(np.corrcoef(xy[:, 0], x[:, 0])[0, 1]) > 0.99
    assert abs(np.corrcoef(xy[:, 1], x[:, 4])[0, 1]) > 0.99
    assert np.allclose(xy.mean(axis=0), 0.0, atol=1e-9)
    assert np.array_equal(plots.pca_2d(x), xy)


def test_pca_2d_of_one_dimensional_or_single_row_input():
    assert plots.pca_2d(np.arange(6.0).reshape(6, 1)).shape == (6, 2)
    assert plots.pca_2d(np.ones((1, 4))).shape == (1, 2)


def test_show_holes_paints_missing_pixels_magenta_and_keeps_the_rest():
    gray = np.full((4, 4, 1), 7, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    out = plots.show_holes(gray, mask)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert tuple(out[1, 2]) == plots.HOLE_COLOUR
    assert (out[~mask] == 7).all()
    assert (gray == 7).all()  # the input is untouched


def test_training_curves_plot_is_a_png():
    history = [{"epoch": e, "loss": 2.0 / (e + 1), "accuracy": 0.3 + 0.2 * e,
                "val_loss": 2.2 / (e + 1), "val_accuracy": 0.25 + 0.2 * e} for e in range(3)]
    png = plots.plot_training_curves(history)
    assert png.startswith(PNG) and _image_size(png) == (1000, 360)


def test_training_curves_without_validation_figures():
    png = plots.plot_training_curves([{"epoch": 0, "loss": 1.0, "accuracy": 0.5}])
    assert png.startswith(PNG)


def test_confusion_matrix_plot_is_a_png():
    png = plots.plot_confusion_matrix([[5, 1, 0], [0, 6, 0], [2, 0, 4]], CLASSES)
    assert png.startswith(PNG)


def test_imputation_examples_plot_has_a_row_per_example():
    rng = np.random.default_rng(1)
    examples = [{"raw": rng.integers(0, 256, (20, 24, c), dtype=np.uint8), "mask": rng.random((20, 24)) < 0.2,
                 "imputed": rng.integers(0, 256, (8, 8, c), dtype=np.uint8), "title": f"example {c}"}
                for c in (1, 3)]
    one = plots.plot_imputation_examples(examples[:1])
    two = plots.plot_imputation_examples(examples)
    assert one.startswith(PNG) and two.startswith(PNG)
    assert _image_size(two)[1] > _image_size(one)[1]


def test_embedding_map_has_one_or_two_panels():
    rng = np.random.default_rng(2)
    xy = rng.normal(size=(60, 2))
    labels = [CLASSES[i % 3] for i in range(60)]
    clusters = np.array([i % 4 - 1 for i in range(60)])  # includes noise (-1)
    by_label = plots.plot_embedding_map(xy, labels)
    both = plots.plot_embedding_map(xy, labels, clusters)
    assert _image_size(both)[0] > _image_size(by_label)[0]


def test_a_cluster_has_the_colour_of_its_main_label_in_the_embedding_map():
    labels = ["cat"] * 5 + ["dog"] * 5
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, -1])  # cluster 0 all cats, cluster 1 mostly dogs, one noise
    (_, _, by_cluster), (_, _, by_label) = plots.embedding_panels(labels, clusters)
    assert by_cluster["cluster 0"] == ("cluster 0: mostly cat", by_label["cat"][1])
    assert by_cluster["cluster 1"] == ("cluster 1: mostly dog", by_label["dog"][1])
    assert by_label["cat"][1] != by_label["dog"][1] and by_cluster["noise"][0] == "noise"


def test_html_table_escapes_and_formats_cells():
    table = page.html_table(["name", "value"], [("<b>", 0.123456), ("none", None), ("reasons", {"a": 2})])
    assert "&lt;b&gt;" in table and "<b>" not in table
    assert '<td class="num">0.1235</td>' in table
    assert "<td>—</td>" in table and "<td>a: 2</td>" in table


def test_render_report_marks_missing_sections_and_counts_images_on_load():
    html = page.render_report("Fusion run r1", "ingest flow", [
        ("Run summary", "<p>ok</p>"), ("Training curves", None),
        ("Embedding map", page.html_image("embeddings.png", "map"))])
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("Not in this run.") == 1
    assert '<img src="embeddings.png" alt="map">' in html
    assert "imagesLoaded" in html and "naturalWidth" in html
    assert "http" not in html  # no external assets


def _build_store(root: Path) -> tuple[Store, str]:
    """A store holding one run of every stage but report, written directly (no Ray, no TensorFlow)."""
    store = Store(str(root))
    rng = np.random.default_rng(4)
    n, ids = 30, [f"{i:064x}" for i in range(30)]
    labels = [CLASSES[i % 3] for i in range(n)]
    raw = rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)
    masks = [None if i % 4 else np.packbits(rng.random((12, 12)) < 0.3).tobytes() for i in range(n)]
    images = pa.table({"image_id": ids, "source": [f"/src/{i}.png" for i in range(n)], "label": labels,
                       "split": ["test" if i % 3 == 0 else "train" for i in range(n)], "height": [12] * n,
                       "width": [12] * n, "channels": pa.array([3] * n, pa.int8()),
                       "pixels": [r.tobytes() for r in raw], "mask": masks}, schema=IMAGES_SCHEMA)
    run_id = store.start_run("nightly", {"source": "/src"})
    images_v = store.commit_version("images", [write_shard(store.root, "datasets/images/a.parquet", images)], run_id)
    pixels = pa.table({"image_id": ids, "label": labels, "split": images.column("split"),
                       "pixels": array_to_pixels(raw[:, ::2, ::2]),
                       "imputed_fraction": pa.array([0.0] * n, pa.float32()),
                       "impute_method": ["harmonic"] * n}, schema=pixels_schema(6, 6, 3))
    pixels_v = store.commit_version("pixels", [write_shard(store.root, "datasets/pixels/a.parquet", pixels)], run_id,
                                    info={"images_version": images_v, "shape": [6, 6, 3]})
    cm = [[3, 1, 0], [0, 4, 0], [1, 0, 1]]
    metrics = {"accuracy": 0.8, "macro_precision": 0.8, "macro_recall": 0.75, "macro_f1": 0.76, "n": 10,
               "per_class_f1": {"circle": 0.75, "square": 0.9, "stripes": 0.6}, "confusion_matrix": cm,
               "history": [{"epoch": e, "loss": 1.0 - 0.3 * e, "accuracy": 0.5 + 0.1 * e,
                            "val_loss": 1.1 - 0.3 * e, "val_accuracy": 0.45 + 0.1 * e} for e in range(2)]}
    model_v = store.register_model(run_id, "cnn", str(root / "models/m.keras"), "k", pixels_v, metrics,
                                   {"decisions": {"excluded": 1, "relabelled": 1, "leaks_moved": 0}})
    store.set_champion(model_v, reason="test")
    store.decide([{"image_id": ids[3], "action": "exclude", "reason": "blurred"},
                  {"image_id": ids[4], "action": "relabel", "label": CLASSES[2]}], "ann")
    probs = rng.random((n, 3)).astype(np.float32)
    preds = pa.table({"image_id": ids, "label": labels, "split": pixels.column("split"),
                      "predicted": [CLASSES[i] for i in probs.argmax(axis=1)], "confidence": probs.max(axis=1),
                      "probs": array_to_fixed_list(probs),
                      "embedding": array_to_fixed_list(rng.normal(size=(n, 16)))})
    preds_v = store.commit_version("predictions", [write_shard(store.root, "datasets/predictions/a.parquet", preds)],
                                   run_id, info={"pixels_version": pixels_v, "model_version": model_v})
    assigned = [i % 3 for i in range(n)]
    clusters = pa.table({"image_id": ids, "cluster": pa.array(assigned, pa.int32()),
                         "distance": pa.array(rng.random(n), pa.float32())})
    clusters_v = store.commit_version("clusters", [write_shard(store.root, "datasets/clusters/a.parquet", clusters)],
                                      run_id, info={"predictions_version": preds_v})
    store.replace_results("predictions", run_id, [
        {"image_id": i, "model_version": model_v, "label": label, "split": split, "confidence": 0.5,
         "predicted": CLASSES[1] if i in (ids[0], ids[3]) else label}
        for i, label, split in zip(ids, labels, pixels.column("split").to_pylist())])
    store.replace_results("cluster_assignments", run_id, [{"image_id": i, "cluster": c, "distance": i.count("1")}
                                                          for i, c in zip(ids, assigned)])
    store.replace_results("cluster_summaries", run_id, [
        {"cluster": c, "size": 10, "top_label": CLASSES[c], "purity": 1.0, "top_labels": {CLASSES[c]: 10},
         "exemplars": ids[c::3][:5], "outliers": ids[c::3][-5:]} for c in range(3)])
    store.replace_results("findings", run_id, [
        {"kind": "label_error", "image_id": ids[0], "score": 0.9, "duplicate_set": None, "label": CLASSES[0],
         "suggested": CLASSES[1], "split": "train"},
        *({"kind": "duplicate", "image_id": i, "score": 0.99, "duplicate_set": 0, "label": CLASSES[0],
           "suggested": None, "split": "train"} for i in ids[:2])])
    store.add_quarantine(run_id, [{"source": "/src/bad.png", "content_hash": "0" * 64, "stage": "ingest",
                                   "error_class": "not_an_image", "message": "cannot identify image file"}])
    outputs = {
        "ingest": ({"files": 31, "new_images": n, "already_stored": 0, "quarantined": 1,
                    "quarantine_reasons": {"not_an_image": 1}, "total_images": n}, {"version": images_v}),
        "preprocess": ({"images": n}, {"version": pixels_v}),
        "drift": ({"reference_images": 20, "new_images": 10, "flagged": 1},
                  {"reference_model": model_v, "flagged": ["label_mix"], "note": None, "checks": [
                      {"check": "pixel_shift", "value": 0.1, "threshold": 0.25, "p_value": 0.3, "flagged": False},
                      {"check": "label_mix", "value": 0.4, "threshold": 0.15, "p_value": 0.0001, "flagged": True}]}),
        "train": ({"trained": 1, "holdout_images": 10},
                  {"model_version": model_v, "stage": "champion", "promotion": "first model: promoted"}),
        "infer": ({"predictions": n, "reused": 0}, {"version": preds_v, "table_run_id": run_id}),
        "cluster": ({"images": n, "clusters": 3}, {"version": clusters_v, "table_run_id": run_id}),
        "mine": ({"images": n, "duplicate_sets": 1, "in_duplicate_sets": 2, "leaking": 0, "label_issues": 1,
                  "outliers": 0}, {"table_run_id": run_id}),
    }
    for stage, (counts, out) in outputs.items():
        store.start_stage(run_id, stage)
        store.finish_stage(run_id, stage, "completed", counts=counts, metrics={"seconds": 1.0}, outputs=out)
    return store, run_id


def test_write_report_has_every_section_with_its_images(settings):
    store, run_id = _build_store(Path(settings.store.root))
    result = write_report(settings, Store.from_settings(settings), run_id)
    folder = Path(store.root) / "reports" / run_id
    assert result.stage == "report" and result.outputs["report"] == str(folder / "index.html")
    assert result.outputs["images"] == ["confusion.png", "embeddings.png", "imputation.png", "training.png"]
    html = (folder / "index.html").read_text()
    assert "Not in this run." not in html
    thumbnails = re.findall(r'src="(thumbs/\w+\.png)"', html)
    for name in result.outputs["images"] + thumbnails:
        assert (folder / name).read_bytes().startswith(PNG)
        assert f'src="{name}"' in html
    assert "not_an_image" in html and "/src/bad.png" in html
    assert result.counts == {"sections": 10, "images": 4, "thumbnails": len(set(thumbnails))} and thumbnails
    # every cluster thumbnail is captioned (id, given and predicted label) and links to its cluster's gallery page
    links = re.findall(r"<h3><a href=\"(gallery/cluster-\d-1\.html)\">", html)
    assert len(links) == 3 and all((folder / link).is_file() for link in links)
    figure = re.search(r'<figure><a href="gallery/cluster-0-1.html"><img src="thumbs/(\w+)\.png"[^>]*></a>'
                       r'<figcaption>(.*?)</figcaption>', html)
    assert figure and figure.group(2).split("<br>")[0] == figure.group(1)[:12]
    assert re.search(r"<br>(circle|square|stripes)<br>predicted (circle|square|stripes)", figure.group(2))
    assert "Likely label errors</h3>" in html and "fusion find label-errors" in html and "Near-duplicates</h3>" in html
    assert "1 image(s) excluded, 1 label(s) corrected" in html and "<td>blurred</td>" in html
    assert 'href="gallery/index.html"' in html and result.outputs["gallery"] == str(folder / "gallery" / "index.html")
    # it leads with what changed: the promotion decision, then drift (flagged checks first)
    assert html.index("What changed</h2>") < html.index("Run summary</h2>")
    assert html.index("first model: promoted") < html.index("flagged label_mix") < html.index("Run summary</h2>")
    assert html.index("FLAGGED") < html.index("pixel_shift</td>")
    assert "16-d embeddings" in html  # the dimension the model has, read from the predictions


def test_imputation_examples_take_one_label_after_another(settings):
    from fusion_core.stages.report.imputation import _spread_over_labels

    store, _ = _build_store(Path(settings.store.root))
    rows = _spread_over_labels(store, store.latest_version("images")["shards"])
    labels = [r["label"] for r in rows]
    assert len(rows) == 6 and all(r["mask"] is not None for r in rows)
    assert len(set(labels[:3])) == 3 and labels[:3] == labels[3:]  # every label once, then again


def test_the_gallery_pages_its_groups_and_every_link_and_thumbnail_resolves(settings, monkeypatch):
    from fusion_core.stages.report import gallery

    monkeypatch.setattr(gallery, "PAGE_SIZE", 4)
    store, run_id = _build_store(Path(settings.store.root))
    write_report(settings, Store.from_settings(settings), run_id)
    folder = Path(store.root) / "reports" / run_id / "gallery"
    pages = {p.name: p.read_text() for p in folder.glob("*.html")}
    assert {"index.html", "label-error-1.html", "duplicate-1.html", "confusion-0-1-1.html", "cluster-0-1.html",
            "cluster-0-3.html"} <= set(pages) and not {"cluster-0-4.html", "confusion-2-0-1.html"} & set(pages)
    for name, text in pages.items():
        for link in re.findall(r'(?:href|src)="([^"#]+)"', text):
            assert (folder / link).is_file(), (name, link)
    assert "suggested square" in pages["label-error-1.html"] and ">next<" not in pages["label-error-1.html"]
    assert ">next<" in pages["cluster-0-1.html"] and ">previous<" in pages["cluster-0-3.html"]
    assert len(list((folder / "thumbs").glob("*.png"))) == len(set(re.findall(r'src="thumbs/(\w+)\.png"',
                                                                               "".join(pages.values()))))


def test_the_report_compares_with_the_champion_and_the_previous_run_and_shows_the_known_status(settings):
    store, first = _build_store(Path(settings.store.root))
    store.finish_run(first, "completed")
    champion = store.champion()
    metrics = {**champion["metrics"], "accuracy": 0.9, "per_class_f1": {"circle": 0.95, "square": 0.9, "stripes": 0.7},
               "vs_champion": {"version": champion["version"], "n": 10, "accuracy": 0.8, "macro_f1": 0.76,
                               "per_class_f1": champion["metrics"]["per_class_f1"], "challenger_only": 2,
                               "champion_only": 1, "p_value": 0.5}}
    second = store.start_run("nightly", {"source": "/src"})
    model_v = store.register_model(second, "cnn", champion["path"], "k2", 1, metrics, {})
    for stage, counts, outputs in [
            ("ingest", {"total_images": 40}, {"version": 1}),
            ("train", {"trained": 1}, {"model_version": model_v, "promotion": "not significant: kept as challenger"})]:
        store.start_stage(second, stage)
        store.finish_stage(second, stage, "completed", counts=counts, metrics={"seconds": 1.0}, outputs=outputs)
    html = Path(write_report(settings, store, second, status="completed").outputs["report"]).read_text()
    assert f"vs champion v{champion['version']} on the same 10 holdout" in html
    assert "not significant: kept as challenger" in html
    assert f"previous nightly run ({first})" in html
    assert "<td>images in the store</td><td class=\"num\">30</td><td class=\"num\">40</td>" in html
    assert "nightly flow, completed" in html  # the status passed in, not the catalog's "running"
    took = re.search(r"<td>took</td><td>([^<]*)</td>", html).group(1)
    assert re.fullmatch(r"\d+ s \(up to this report\)", took), took  # not "in progress"

    # the runs index: both runs, newest first, this one linked to its report, the trends of the two nights
    runs_page = Path(settings.store.root, "reports", "index.html").read_text()
    assert runs_page.index(second) < runs_page.index(first)
    assert f'<a href="{second}/index.html">{second}</a>' in runs_page and 'href="../index.html"' in html
    assert Path(settings.store.root, "reports", "trends.png").read_bytes().startswith(b"\x89PNG")
    assert not [f for f in check_store(store).findings if f.kind == "orphan"]  # the index is no orphan


def test_write_report_of_an_ingest_only_run_says_what_is_missing(settings):
    store = Store.from_settings(settings)
    run_id = store.start_run("ingest", {"source": "/src"})
    store.start_stage(run_id, "ingest")
    store.finish_stage(run_id, "ingest", "completed", outputs={"version": None},
                       counts={"files": 2, "new_images": 0, "already_stored": 0, "quarantined": 2,
                               "quarantine_reasons": {"empty_file": 2}, "total_images": 0})
    store.finish_run(run_id, "completed")
    result = write_report(settings, store, run_id)
    html = Path(result.outputs["report"]).read_text()
    assert html.count("Not in this run.") == 8
    assert "empty_file" in html and result.outputs["images"] == []


def test_a_first_run_s_drift_section_says_only_that_there_is_no_champion():
    stage = {"counts": {"new_images": 0, "reference_images": 0},
             "outputs": {"reference_model": None, "checks": [], "note": "no champion yet: nothing to compare with"}}
    body = sections.drift_checks(stage).body
    assert body == "<p>no champion yet: nothing to compare with</p>"


def test_write_report_of_an_unknown_run(settings):
    with pytest.raises(LookupError, match="no run"):
        write_report(settings, Store.from_settings(settings), "nope")


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        skip_or_fail("chromium is not installed (scripts/test.sh installs Debian's chromium package)")
    return path


def _chromium_run(page: Path, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="fusion-chromium-") as profile:
        return subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args, page.as_uri()],
            capture_output=True, text=True, timeout=180)


@pytest.mark.ray
@pytest.mark.tf
@pytest.mark.prefect
@pytest.mark.xdist_group("demo_nightly")  # one worker runs the shared nightly once
def test_nightly_report_renders_with_its_images_in_chromium(demo_nightly, tmp_path):
    chromium = _chromium()
    root, result = demo_nightly
    page = Path(result["report"]["outputs"]["report"])
    assert page == root / "reports" / result["run_id"] / "index.html"
    assert Store(str(root)).get_run(result["run_id"])["stages"][-1]["stage"] == "report"
    counts = result["report"]["counts"]
    assert len(result["report"]["outputs"]["images"]) == counts["images"] == 4 and counts["thumbnails"] > 0

    dom = _chromium_run(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    images = re.findall(r"<img\b", dom.stdout)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom.stdout)
    assert loaded, f"the page's load script did not run ({chromium})"
    assert len(images) >= 4 + counts["thumbnails"] and int(loaded.group(1)) == len(images)
    assert "Not in this run." not in dom.stdout

    gallery = page.parent / "gallery"  # a page of the gallery: its thumbnails load and its links resolve
    members = _chromium_run(gallery / "cluster-0-1.html", "--dump-dom")
    assert members.returncode == 0, members.stderr[-2000:]
    thumbnails = re.findall(r"<img\b", members.stdout)
    assert thumbnails and re.search(r'data-images-loaded="(\d+)"', members.stdout).group(1) == str(len(thumbnails))
    assert all((gallery / link).is_file() for link in re.findall(r'href="([^"#]+)"', members.stdout))

    shot = tmp_path / "report.png"
    taken = _chromium_run(page, f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG) and _image_size(shot.read_bytes()) == (1280, 4000)
