"""hallugraph: hallucination detection from a language model's own computation."""

__version__ = "0.1.0"


def __getattr__(name: str):  # hallugraph.Scorer without importing torch on `import hallugraph`
    if name == "Scorer":
        from hallugraph.scoring import Scorer

        return Scorer
    raise AttributeError(f"module 'hallugraph' has no attribute {name!r}")
