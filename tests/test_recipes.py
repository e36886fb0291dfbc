import pytest

from fusion_core.config import load_settings
from fusion_core.recipes import RECIPES, resolve_recipe


def test_seed_recipe_is_the_seeds_own():
    seed = RECIPES["seed"]
    assert (seed.model, seed.optimizer, seed.batch_size, seed.epochs, seed.augment) == ("seed_cnn", "adam", 64, 10,
                                                                                        False)


def test_explicit_settings_override_the_recipe():
    recipe = load_settings(None, {"train.recipe": "best", "train.epochs": 3, "train.model": "attention"}
                           ).train.resolved_recipe()
    assert (recipe.model, recipe.epochs, recipe.optimizer, recipe.flip) == ("attention", 3, "sgd", "alternating")


def test_unknown_recipe_is_named():
    with pytest.raises(ValueError, match="seed, best, fast"):
        resolve_recipe("fastest")
