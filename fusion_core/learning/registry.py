"""The model registry: published model files, their class names, and which version is champion.

A published model is ``<store root>/models/<folder>/model.keras`` with ``classes.json`` beside it,
registered in the catalog's ``models`` table as a version with a stage: ``challenger`` when
registered, ``champion`` when promoted (one at a time), ``archived`` when replaced. TensorFlow is
imported only by the functions that load a model.
"""

from __future__ import annotations

import json
import os
import tempfile

from fusion_core import uri
from fusion_core.store import Store

MODEL_FILE = "model.keras"
CLASSES_FILE = "classes.json"


def publish_model(store: Store, model_file: str, classes: list[str], folder: str) -> str:
    """Copy a saved model file and its class names to ``<root>/models/<folder>/``; returns the model's path."""
    path = store.path("models", folder, MODEL_FILE)
    uri.upload(model_file, path)
    uri.write_bytes(store.path("models", folder, CLASSES_FILE), json.dumps(classes).encode())
    return path


def register_model(store: Store, model_file: str, classes: list[str], *, run_id: str, name: str, key: str,
                   dataset_version: int, metrics: dict, config: dict) -> dict:
    """Publish a saved model under ``models/<run_id>/`` and register it as a challenger; returns its row."""
    path = publish_model(store, model_file, classes, run_id)
    version = store.register_model(run_id, name, path, key, dataset_version, metrics, config)
    return store.get_model(version)


def read_classes(model_path: str) -> list[str]:
    """Class names published beside a model file."""
    return json.loads(uri.read_bytes(uri.join(model_path.rsplit("/", 1)[0], CLASSES_FILE)))


def load_published(model_path: str, compile: bool = True):
    """A published model, loaded into this process (copied locally first when it is on an object store)."""
    from fusion_core.learning.model import load_model

    with tempfile.TemporaryDirectory() as tmp:
        return load_model(uri.local_file(model_path, tmp), compile=compile)


def save_model_file(model, folder: str) -> str:
    """Save a Keras model as ``folder/model.keras`` (the Keras v3 format); returns its path."""
    path = os.path.join(folder, MODEL_FILE)
    model.save(path, save_format="keras_v3")
    return path


def promotion_decision(challenger: dict, champion: dict | None, margin: float, alpha: float) -> tuple[bool, str]:
    """Whether a challenger should replace the champion, and why.

    Both were scored on the challenger's holdout (``metrics["vs_champion"]``, see ``compare_on_holdout``).
    Promotion needs an accuracy gain of at least ``margin`` that McNemar's test finds significant at
    ``alpha`` on those images. A champion that cannot score the holdout (other classes or input shape)
    cannot serve the new data, so it is replaced.
    """
    if champion is None:
        return True, "first model: promoted"
    vs = challenger["metrics"].get("vs_champion")
    name = f"champion v{champion['version']}"
    if vs is None or vs["version"] != champion["version"]:
        return False, f"not scored against {name} on the same holdout: kept as challenger"
    if vs.get("incompatible"):
        return True, f"{name} cannot score this holdout ({vs['incompatible']}): promoted"
    gain = challenger["metrics"]["accuracy"] - vs["accuracy"]
    evidence = (f"accuracy {challenger['metrics']['accuracy']:.4f} vs {vs['accuracy']:.4f} for {name} "
                f"on the same {vs['n']} images (McNemar p={vs['p_value']:.3g})")
    if gain <= 0 or gain < margin:
        return False, f"{evidence}: gain {gain:+.4f} is below the margin {margin}: kept as challenger"
    if vs["p_value"] >= alpha:
        return False, f"{evidence}: not significant at {alpha}: kept as challenger"
    return True, f"{evidence}: promoted"


def promote_if_better(store: Store, version: int, margin: float, alpha: float, blocked: str | None = None) -> str:
    """Make ``version`` champion if ``promotion_decision`` says so and nothing ``blocked`` it; returns why."""
    promote, reason = promotion_decision(store.get_model(version), store.champion(), margin, alpha)
    if promote and blocked:
        return f"{reason.removesuffix(': promoted')}; but {blocked}: kept as challenger"
    if promote:
        store.set_champion(version, reason=reason)
    return reason


def rollback_version(models: list[dict], champion: dict | None) -> int | None:
    """The champion before the current one: the newest archived version older than it, if any."""
    earlier = [m["version"] for m in models if m["stage"] == "archived"
               and (champion is None or m["version"] < champion["version"])]
    return max(earlier) if earlier else None


class PromotionRefused(ValueError):
    """A champion change by hand that the policy does not allow."""


def change_champion(store: Store, action: str, version: int | None, *, margin: float, alpha: float,
                    force: bool = False, reason: str | None = None, actor: str = "fusion") -> tuple[int, dict | None]:
    """A champion change by hand: ``promote`` a version through the gate (or past it with ``force``, which needs
    a ``reason``), or ``rollback`` to a version (default: the previous champion). Recorded with who and why;
    returns the new champion's version and the champion it replaced.

    Raises:
        LookupError: a rollback with no earlier champion.
        PromotionRefused: ``force`` without a reason, or a promotion the gate refuses.
    """
    champion = store.champion()
    if version is None and action == "rollback":
        version = rollback_version(store.list_models(), champion)
    if version is None:
        raise LookupError("no earlier champion to roll back to; name a version")
    if force and not reason:
        raise PromotionRefused("--force needs --reason \"why\" (it is recorded)")
    if action == "promote" and not force:
        ok, why = promotion_decision(store.get_model(version), champion, margin, alpha)
        if not ok:
            raise PromotionRefused(f"model v{version} not promoted: {why}; `--force --reason ...` promotes it anyway")
        reason = why if not reason else f"{why}; {reason}"
    store.set_champion(version, reason=reason or f"{action} by hand", actor=actor, forced=force or action == "rollback")
    return version, champion
