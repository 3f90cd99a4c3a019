"""ganime-jax: generate the in-between frames of an anime clip from its first and last frame."""
