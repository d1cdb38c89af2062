"""vosjax: self-supervised video object segmentation in JAX/Flax."""

__version__ = "0.1.0"
