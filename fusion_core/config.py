"""Typed settings for every stage.

Precedence, lowest to highest: defaults, a YAML profile, environment variables
``FUSION_<SECTION>__<KEY>``, then explicit overrides (CLI flags).
"""

from __future__ import annotations

import contextvars
import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"  # shipped inside the package

_profile_data: contextvars.ContextVar[dict] = contextvars.ContextVar("fusion_profile", default={})


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreConfig(_Section):
    root: str = "./fusion-store"
    db: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file under root")
    sqlite_lock_wait_s: float = Field(30.0, gt=0, description="how long a SQLite catalog waits for another "
                                      "program's write lock before the run fails")


class RayConfig(_Section):
    address: str | None = Field(None, description="existing cluster; RAY_ADDRESS is used when unset")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray; default all")
    node_ip_address: str | None = Field(None, description="node address, e.g. 127.0.0.2 to stay on loopback")
    log_to_driver: bool = Field(False, description="print Ray workers' own output (TensorFlow's, Ray Train's) in "
                                "the driver's terminal; `fusion -v` turns it on; Ray's session logs always have it")


class IngestConfig(_Section):
    files_per_task: int = Field(2000, ge=1, description="images per Ray task")
    max_pixels: int = Field(50_000_000, ge=1, description="larger images are quarantined before decoding")
    max_file_mb: float = Field(256.0, gt=0, description="larger files and archive members are quarantined unread")
    shard_rows: int = Field(100_000, ge=1, description="a task starts a new shard after this many rows")
    shard_mb: float = Field(256.0, gt=0, description="... or after this many MB of pixels")
    row_group_mb: float = Field(32.0, gt=0, description="Parquet row group size, in MB of pixels")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    manifest_paths_anywhere: bool = Field(False, description="a manifest may name files outside its own folder")

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> "IngestConfig":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


class PreprocessConfig(_Section):
    size: int = Field(32, ge=4, le=1024)
    grayscale: bool = False
    impute_method: Literal["auto", "mean", "nearest", "normalized_convolution", "harmonic", "biharmonic",
                           "telea", "navier_stokes"] = "auto"
    resample: Literal["area", "bilinear"] = Field(
        "area", description="area: box averaging when shrinking, bilinear when enlarging; bilinear: always")
    fit: Literal["stretch", "pad", "crop"] = Field(
        "stretch", description="non-square images: stretch, keep aspect and pad, or keep aspect and centre crop")
    scale: Literal["unit", "standardize"] = Field(
        "unit", description="model input: [0, 1], or (x - mean) / std with the dataset's per-channel stats")


class TrainConfig(_Section):
    recipe: Literal["seed", "best", "fast"] = Field("seed", description="see fusion_core/recipes.py")
    model: Literal["seed_cnn", "resnet", "attention", "fast_cnn", "airbench"] | None = Field(None, description="default: the recipe's")
    epochs: int | None = Field(None, ge=1, description="default: the recipe's")
    batch_size: int | None = Field(None, ge=1, description="default: the recipe's")
    learning_rate: float | None = Field(None, gt=0, description="default: the recipe's")
    num_workers: int = Field(1, ge=1, description="Ray Train workers; one uses every core of its node "
                                                  "through TensorFlow's threads, without the cross-worker "
                                                  "strategy's cost per step")
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = Field(
        None, description="e.g. {CPU: 8, GPU: 1}; default 1 CPU per worker, or 1 GPU with use_gpu")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="where Ray puts the workers: PACK on as few nodes as fit, SPREAD over nodes")
    mixed_precision: bool = Field(True, description="float16 on GPUs, bfloat16 on CPUs with bf16 instructions")
    jit_compile: bool = Field(False, description="XLA; off by default: measure first (docs/guide.md, training on GPUs)")
    cache_data: bool = Field(True, description="keep each worker's shard in its memory after the first epoch "
                                               "(needs that much RAM per worker); off: stream every epoch")
    retrain: Literal["on_new_data", "on_drift", "always"] = Field(
        "on_new_data", description="on_new_data: once per data and settings; on_drift: only when the drift check "
                                   "flags something (or there is no champion); always: every run")
    init: Literal["scratch", "champion"] = Field(
        "scratch", description="champion: start from the champion's weights when it has the same model, classes "
                               "and input shape (warm start)")
    promote_margin: float = Field(0.0, ge=0.0, description="accuracy gain over the champion needed to promote")
    promote_alpha: float = Field(0.05, gt=0.0, le=1.0, description="significance level of McNemar's test of "
                                                                    "challenger vs champion on the same holdout")
    max_failures: int = Field(2, ge=0, description="worker failures a run recovers from (from its last checkpoint)")
    seed: int = 0

    def resolved_recipe(self):
        """The named recipe with this section's explicit model, epochs, batch size and learning rate."""
        from fusion_core.recipes import resolve_recipe

        return resolve_recipe(self.recipe, model=self.model, epochs=self.epochs, batch_size=self.batch_size,
                              learning_rate=self.learning_rate)


class InferConfig(_Section):
    batch_size: int = Field(512, ge=1)
    concurrency: int = Field(2, ge=1, description="most predictor actors; the pool starts with one")
    top_k: int = Field(3, ge=1, description="labels kept per image, most probable first")
    in_process_max: int = Field(50_000, ge=0, description="datasets up to this many images are predicted in the "
                                                          "driver's process; larger ones on a Ray actor pool")
    model_version: int | None = Field(None, description="default: the champion")


class ClusterConfig(_Section):
    method: Literal["kmeans", "minibatch_kmeans", "hdbscan"] = "kmeans"
    k: int | Literal["auto"] | None = Field(None, description="None: number of labels; auto: best silhouette")
    k_min: int = Field(2, ge=2)
    k_max: int = Field(20, ge=2)
    reduce: Literal["none", "pca", "whiten"] = "none"
    pca_dim: int = Field(50, ge=2)
    min_cluster_size: int = Field(20, ge=2, description="hdbscan only")
    exemplars: int = Field(5, ge=1, description="exemplars and outliers kept per cluster")
    sample_size: int = Field(100_000, ge=100, description="larger datasets are clustered on a sample this big, "
                                                          "then every image goes to its nearest cluster")
    seed: int = 0

    @model_validator(mode="after")
    def _k_is_a_cluster_count(self) -> "ClusterConfig":
        if isinstance(self.k, int) and self.k < 2:
            raise ValueError("k must be at least 2, 'auto' or unset")
        return self


class QualityConfig(_Section):
    """Thresholds of the image quality flags (``fusion_core.imaging.quality``); pixel values scaled to 0-1."""

    dark_below: float = Field(0.1, ge=0, le=1, description="mean brightness under which an image is dark")
    light_above: float = Field(0.92, ge=0, le=1, description="mean brightness over which an image is light")
    constant_below: float = Field(0.015, ge=0, description="brightness standard deviation of a near-constant image")
    entropy_below: float = Field(1.0, ge=0, le=5, description="histogram entropy (bits) of a low-information image")
    blurry_below: float = Field(0.002, ge=0, description="variance of the Laplacian of a blurry image")
    colour_below: float = Field(0.01, ge=0, description="mean channel difference of a grey image")
    max_aspect: float = Field(2.5, ge=1, description="aspect ratio (either way) beyond which the size is odd")
    size_factor: float = Field(4.0, ge=1, description="times the median area (either way) beyond which the size is odd")


class MineConfig(_Section):
    """What the mine stage looks for in a predictions version's embeddings and probabilities, and in pixels."""

    neighbours: int = Field(10, ge=1, description="nearest neighbours looked up per image")
    near_duplicate_similarity: float = Field(0.97, gt=0, le=1, description="cosine similarity of embeddings from "
                                             "which two images can count as near-duplicates")
    near_duplicate_ratio: float = Field(0.2, gt=0, le=1, description="and at most this fraction of the typical "
                                        "distance (1 - similarity) to an image's last neighbour")
    copy_distance: float = Field(0.03, ge=0, le=1, description="near-duplicates' colour thumbnails (8x8) differ by at "
                                 "most this mean absolute difference (0-1); also the duplicate-aware holdout's")
    exact_max: int = Field(200_000, ge=2, description="exact nearest-neighbour search up to this many images, "
                                                      "an HNSW graph (approximate) above")
    outlier_fraction: float = Field(0.01, ge=0, lt=1, description="the most unique images flagged as outliers")
    folds: int = Field(5, ge=2, description="folds of the out-of-sample probabilities that label issues use")
    seed: int = 0
    quality: QualityConfig = QualityConfig()


class DriftConfig(_Section):
    """What counts as drift between a run's new images and the data the champion was trained on.

    Proportions (labels, sizes, clusters) are flagged when they differ by a total variation distance
    above the threshold and a chi-square test is significant at ``alpha``; rates by an absolute
    difference; pixels by a mean shift in reference standard deviations (or a relative change of the
    standard deviation); embeddings by an MMD permutation test at ``alpha``.
    """

    action: Literal["report", "block_promotion"] = Field(
        "report", description="report: show drift; block_promotion: a run with drift does not promote")
    alpha: float = Field(0.01, gt=0.0, lt=1.0, description="significance level of the drift tests")
    min_images: int = Field(50, ge=2, description="fewer new images than this are not checked")
    sample_size: int = Field(1000, ge=10, description="images per side scored by the champion")
    label_mix: float = Field(0.15, gt=0.0, le=1.0)
    size_mix: float = Field(0.15, gt=0.0, le=1.0)
    missing_rate: float = Field(0.1, gt=0.0, le=1.0)
    quarantine_rate: float = Field(0.05, gt=0.0, le=1.0)
    pixel_shift: float = Field(0.25, gt=0.0)
    confidence_drop: float = Field(0.1, gt=0.0, le=1.0)
    cluster_mix: float = Field(0.15, gt=0.0, le=1.0)


HOUR = 3600.0


class StageTimeouts(_Section):
    """Seconds one attempt of a stage's Prefect task may run before it fails as timed out; None: no limit."""

    ingest: float | None = Field(4 * HOUR, gt=0)
    preprocess: float | None = Field(4 * HOUR, gt=0)
    drift: float | None = Field(HOUR, gt=0)
    train: float | None = Field(8 * HOUR, gt=0)
    infer: float | None = Field(4 * HOUR, gt=0)
    cluster: float | None = Field(2 * HOUR, gt=0)
    mine: float | None = Field(2 * HOUR, gt=0)
    report: float | None = Field(HOUR / 2, gt=0)


class OrchestrationConfig(_Section):
    timeouts: StageTimeouts = StageTimeouts()
    retry_delays: list[Annotated[float, Field(ge=0)]] = Field(
        [10.0, 20.0, 40.0], max_length=10, description="seconds before each further attempt of a stage that failed "
        "with a transient error (a dropped connection, a lost Ray worker); one attempt per entry, [] for none")
    server_startup_timeout: float = Field(300.0, gt=0, description="seconds the `fusion` command waits for the "
                                          "local Prefect server it starts when PREFECT_API_URL is unset (a fresh "
                                          "Prefect home migrates its database first)")
    webhook_url: str | None = Field(None, description="a failed or crashed nightly run POSTs a JSON message "
                                                      "here; unset or empty: no message")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_is_http(cls, url: str | None) -> str | None:
        if url and not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url


class DemoConfig(_Section):
    per_class: int = Field(400, ge=1)
    seed: int = 0
    source: str = "./fusion-demo-data"
    epochs: int = Field(20, ge=1, description="the demo run's train.epochs where the settings leave them to the "
                                              "recipe (the seed recipe's 10 leave the demo short of its accuracy)")


class Settings(BaseSettings):
    """All of Fusion's settings, one section per stage."""

    model_config = SettingsConfigDict(env_prefix="FUSION_", env_nested_delimiter="__", extra="forbid")

    profile: str = "default"
    store: StoreConfig = StoreConfig()
    ray: RayConfig = RayConfig()
    ingest: IngestConfig = IngestConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    cluster: ClusterConfig = ClusterConfig()
    mine: MineConfig = MineConfig()
    drift: DriftConfig = DriftConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    demo: DemoConfig = DemoConfig()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return init_settings, env_settings, _ProfileSource(settings_cls)

    def section_hash(self, *sections: str) -> str:
        """Short stable hash of the named sections, used to key derived outputs."""
        data = {name: getattr(self, name).model_dump() for name in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


class _ProfileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _profile_data.get()


def profile_names() -> list[str]:
    """The profiles shipped with Fusion (``--config NAME``)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def resolve_profile(config: str | None) -> Path | None:
    """Map a profile name (``smoke``) or a path to a YAML file."""
    if not config:
        return None
    path = Path(config)
    if not path.suffix and not path.exists():
        path = PROFILES_DIR / f"{config}.yaml"
    if not path.is_file():
        raise ConfigError(f"config: no such file or profile {config!r} (profiles: {', '.join(profile_names())})")
    return path


def _nest(overrides: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def load_settings(config: str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build settings from a profile or YAML file plus dotted overrides.

    Args:
        config: profile name in ``fusion_core/profiles`` or path to a YAML file.
        overrides: ``{"train.epochs": 3, "store.root": "/data"}``; highest precedence.

    Raises:
        ConfigError: naming the bad field and what it accepts.
    """
    path = resolve_profile(config)
    profile = yaml.safe_load(path.read_text()) or {} if path else {}
    if not isinstance(profile, dict):
        raise ConfigError(f"config: {path} must hold a mapping of sections")
    token = _profile_data.set(profile)
    try:
        return Settings(**_nest({k: v for k, v in (overrides or {}).items() if v is not None}))
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
    finally:
        _profile_data.reset(token)


def _describe(err: ValidationError) -> str:
    """One line naming each bad field and what it accepts; a misspelt key gets the closest known one."""
    problems = []
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"{field}: no such setting; {_closest_key(item['loc'])}")
        else:
            problems.append(f"{field}: {item['msg']} (got {item.get('input')!r})")
    return "invalid configuration: " + "; ".join(problems)


def _closest_key(loc: tuple) -> str:
    """``did you mean SECTION.KEY?`` for an unknown key at ``loc``, else the keys its section takes."""
    model: Any = Settings
    for part in loc[:-1]:
        model = getattr(model, "model_fields", {}).get(part)
        model = getattr(model, "annotation", None)
    known = sorted(getattr(model, "model_fields", {}))
    section = ".".join(str(p) for p in loc[:-1])
    match = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if match:
        return f"did you mean {section + '.' if section else ''}{match[0]}?"
    return f"{section + ' takes' if section else 'sections are'}: {', '.join(known)}"


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["train.epochs=3"]`` into ``{"train.epochs": 3}`` (values parsed as YAML)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r}: expected SECTION.KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out
