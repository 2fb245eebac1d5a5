"""hallugraph: hallucination detection from a language model's own computation."""

__version__ = "0.1.0"
