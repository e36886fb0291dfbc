"""The report's figures: matplotlib on an Agg canvas, returned as PNG bytes.

matplotlib is imported inside the functions, only when a figure is drawn.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from fusion_core.formatting import printable

HOLE_COLOUR = (255, 0, 255)  # magenta: missing pixels in the "before" images


def _figure(width: float, height: float):
    """A figure on an Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _palette(n: int) -> list:
    """RGBA colours for ``n`` categories (tab10, or tab20 beyond ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W, 3) view of a (H, W), (H, W, 1) or (H, W, 3) image."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def show_holes(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image as RGB with its missing pixels painted magenta."""
    out = as_rgb(pixels).copy()
    out[mask] = HOLE_COLOUR
    return out


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` projected on their first two principal components, shape (N, 2).

    Components are signed so that each one's largest loading is positive (a stable picture).
    """
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    xy = centred @ (components * signs[:, None]).T
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))


def plot_training_curves(history: Sequence[dict]) -> bytes:
    """Loss and accuracy per epoch, training and validation, as PNG bytes."""
    fig = _figure(10, 3.6)
    epochs = [h["epoch"] + 1 for h in history]
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for key, name in ((metric, "training"), (f"val_{metric}", "validation")):
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=name)
        ax.set(title=metric, xlabel="epoch")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _png(fig)


def literal(text: str) -> str:
    """A label drawn as written: ``$`` would start matplotlib's math mode, control characters are escaped."""
    return printable(str(text)).replace("$", r"\$")


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> bytes:
    """Heatmap of a confusion matrix (rows true, columns predicted), shaded by row share, counts written in."""
    cm = np.asarray(matrix, dtype=np.int64)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.55 * len(classes)
    fig = _figure(size + 1.2, size)
    ax = fig.subplots()
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=[literal(c) for c in classes], rotation=45, ha="right")
    ax.set_yticks(ticks, labels=[literal(c) for c in classes])
    ax.set(xlabel="predicted", ylabel="true", title="holdout confusion matrix")
    if len(classes) <= 25:
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _png(fig)


def plot_imputation_examples(examples: Sequence[dict]) -> bytes:
    """One row per example: before (holes magenta), the mask, after imputation.

    Args:
        examples: dicts with ``raw`` (H, W, C) uint8, ``mask`` (H, W) bool, ``imputed`` uint8 image and ``title``.
    """
    fig = _figure(7.5, 0.4 + 1.8 * len(examples))
    axes = fig.subplots(len(examples), 3, squeeze=False)
    for name, ax in zip(("before (holes magenta)", "mask", "after imputation"), axes[0]):
        ax.set_title(name, fontsize=9)
    for row, example in zip(axes, examples):
        panels = ((show_holes(example["raw"], example["mask"]), {}),
                  (example["mask"], {"cmap": "gray", "vmin": 0, "vmax": 1}),
                  (as_rgb(example["imputed"]), {}))
        for ax, (image, style) in zip(row, panels):
            ax.imshow(image, interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel("\n".join(literal(line) for line in example["title"].split("\n")), fontsize=8, rotation=0,
                          ha="right", va="center")
    fig.tight_layout()
    return _png(fig)


def embedding_panels(labels: Sequence[str], clusters: np.ndarray | None = None) -> list[tuple[str, np.ndarray, dict]]:
    """The embedding map's panels, ``(title, each point's name, {name: (legend text, colour)})``: by cluster
    (when given) and by label, one colour per label in both: a cluster takes the colour of the label most of
    its images have (noise, -1, is grey)."""
    labels = np.asarray([str(v) for v in labels], dtype=object)
    label_names = sorted(set(labels), key=_natural)
    colours = dict(zip(label_names, _palette(len(label_names))))
    panels = [("by label", labels, {name: (name, colours[name]) for name in label_names})]
    if clusters is not None:
        named = np.asarray([("noise" if c < 0 else f"cluster {c}") for c in np.asarray(clusters)], dtype=object)
        legend = {"noise": ("noise", (0.6, 0.6, 0.6, 1.0))}
        for name in set(named) - {"noise"}:
            values, counts = np.unique(labels[named == name], return_counts=True)
            top = values[counts.argmax()]
            legend[name] = (f"{name}: mostly {top}", colours[top])
        panels.insert(0, ("by cluster", named, legend))
    return panels


def plot_embedding_map(xy: np.ndarray, labels: Sequence[str], clusters: np.ndarray | None = None) -> bytes:
    """2-D map of embeddings, a panel per ``embedding_panels``."""
    panels = embedding_panels(labels, clusters)
    fig = _figure(6.4 * len(panels), 7.0)
    size = 12 if len(xy) <= 1000 else 5
    for ax, (title, values, legend) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        for name in sorted(set(values), key=_natural):
            keep = values == name
            text, colour = legend[name]
            ax.scatter(xy[keep, 0], xy[keep, 1], s=size, alpha=0.7, color=colour, label=literal(text), linewidths=0)
        ax.set(title=f"embeddings (PCA), {title}", xlabel="PC 1", ylabel="PC 2")
        ax.legend(fontsize=9, markerscale=3, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3, frameon=False)
    fig.tight_layout()
    return _png(fig)


def _natural(name: str) -> tuple:
    """Sort key putting ``cluster 2`` before ``cluster 10``."""
    head, _, tail = name.rpartition(" ")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def plot_trends(labels: Sequence[str], series: dict[str, Sequence[float | None]]) -> bytes:
    """One small panel per series over runs (oldest left; gaps where a run has no value), as PNG bytes."""
    fig = _figure(10, 2.6 * len(series))
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(len(labels))
    for ax, (name, values) in zip(axes, series.items()):
        ax.plot(x, [np.nan if v is None else v for v in values], marker="o")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1].set_xticks(x, [printable(label) for label in labels], rotation=45, ha="right", fontsize=8)
    fig.tight_layout()
    return _png(fig)
