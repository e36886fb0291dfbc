"""What a stage works on when no version is given: the newest committed input, or the champion.

The Prefect tasks resolve unset versions with these functions, and ``fusion run`` checks with
``check_inputs`` that a stage has something to work on before it starts Prefect.
"""

from __future__ import annotations

from fusion_core.config import Settings
from fusion_core.store import Store

NEEDS = {"images": "ingest", "pixels": "preprocess", "predictions": "infer"}  # dataset -> stage that makes it
STAGE_INPUTS = {"preprocess": "images", "drift": "pixels", "train": "pixels", "infer": "pixels",
                "cluster": "predictions", "mine": "predictions"}  # stage -> the dataset it reads


def input_version(store: Store, stage: str, dataset: str, version: int | None = None) -> int:
    """``version``, or the newest committed version of ``dataset`` when it is None.

    Raises:
        LookupError: no version of ``dataset`` yet; the message names the stage to run first.
    """
    if version is not None:
        return version
    latest = store.latest_version(dataset)
    if latest is None:
        raise LookupError(f"{stage}: no {dataset} dataset in the store at {store.root} yet; "
                          f"run {NEEDS[dataset]} first")
    return latest["version"]


def infer_model_version(settings: Settings, store: Store, version: int | None = None) -> int:
    """The model to infer with: ``infer.model_version`` when set (pinned), else ``version`` (the nightly
    flow passes the champion after its training), else the champion.

    Raises:
        LookupError: none of them, as the store has no champion yet.
    """
    chosen = settings.infer.model_version or version
    if chosen is None:
        champion = store.champion()
        if champion is None:
            raise LookupError(f"infer: no champion model in the store at {store.root} yet; run train first")
        chosen = champion["version"]
    return chosen


def check_inputs(settings: Settings, store: Store, stage: str) -> None:
    """Raise ``LookupError`` (naming what to run first) when ``stage`` has no input to work on."""
    if stage in STAGE_INPUTS:
        input_version(store, stage, STAGE_INPUTS[stage])
    if stage == "infer":
        infer_model_version(settings, store)
