"""Training loop, checkpoints and batch embedding."""
