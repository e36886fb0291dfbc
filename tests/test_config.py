import ast
import importlib.util
import typing
from pathlib import Path

import pytest

from fusion_core.config import ConfigError, load_settings, parse_overrides


def test_defaults_need_no_file():
    s = load_settings()
    assert s.store.root == "./fusion-store"
    assert s.train.resolved_recipe().model == "seed_cnn" and s.preprocess.size == 32
    assert load_settings(None, {"train.recipe": "best"}).train.resolved_recipe().model == "airbench"


def test_profile_then_env_then_overrides(monkeypatch):
    assert load_settings("smoke").train.epochs == 2
    monkeypatch.setenv("FUSION_TRAIN__EPOCHS", "5")
    assert load_settings("smoke").train.epochs == 5
    assert load_settings("smoke", {"train.epochs": 7}).train.epochs == 7


def test_yaml_file_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preprocess:\n  grayscale: true\n")
    assert load_settings(str(path)).preprocess.grayscale is True


def test_bad_choice_names_field_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"preprocess.impute_method": "magic"})
    text = str(err.value)
    assert "preprocess.impute_method" in text and "harmonic" in text and "magic" in text


def test_unknown_field_and_profile_are_named():
    with pytest.raises(ConfigError, match="train.epochz"):
        load_settings(None, {"train.epochz": 3})
    with pytest.raises(ConfigError, match="smoke"):
        load_settings("no-such-profile")


def test_split_fractions_must_leave_training_data():
    with pytest.raises(ConfigError, match="ingest"):
        load_settings(None, {"ingest.val_fraction": 0.5, "ingest.test_fraction": 0.5})


def test_parse_overrides_types_values():
    assert parse_overrides(["train.epochs=3", "train.use_gpu=true", "store.root=/x"]) == {
        "train.epochs": 3, "train.use_gpu": True, "store.root": "/x"}
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        parse_overrides(["nonsense"])


def test_section_hash_tracks_changes():
    a, b = load_settings(), load_settings(None, {"preprocess.grayscale": True})
    assert a.section_hash("preprocess") != b.section_hash("preprocess")
    assert a.section_hash("train") == b.section_hash("train")


def _literal_values(annotation) -> tuple:
    """The values of a ``Literal[...]`` annotation, also inside ``Optional[...]`` / ``... | None``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return args
    (inner,) = [a for a in args if a is not type(None)]  # Optional / Union with None
    return _literal_values(inner)


def _model_names_without_tensorflow() -> tuple[str, ...]:
    """``fusion_core.learning.model.MODELS``, read from the source: importing that module imports TensorFlow,
    which this fast test must not load, so the ``MODELS = (...)`` tuple is parsed with ``ast`` instead."""
    path = Path(importlib.util.find_spec("fusion_core.learning.model").origin)  # finds the file without importing it
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["MODELS"]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"no MODELS = (...) assignment in {path}")


def test_config_choices_match_the_code_registries():
    from fusion_core.config import PreprocessConfig, TrainConfig
    from fusion_core.imaging.impute import CHOICES
    from fusion_core.recipes import RECIPES

    impute = _literal_values(PreprocessConfig.model_fields["impute_method"].annotation)
    assert sorted(impute) == sorted(CHOICES) and len(impute) == len(CHOICES)
    recipes = _literal_values(TrainConfig.model_fields["recipe"].annotation)
    assert sorted(recipes) == sorted(RECIPES)
    models = _literal_values(TrainConfig.model_fields["model"].annotation)
    assert sorted(models) == sorted(_model_names_without_tensorflow())
    assert {recipe.model for recipe in RECIPES.values()} <= set(models)  # every recipe's default model is allowed
