"""What the stages share about models: networks and the airbench recipe, the training loop and its feed,
scoring and evaluation, the model registry, clustering."""
