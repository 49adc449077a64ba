"""ModelGate: take a language model from checkpoint to a validated, gated deployment."""

__version__ = "0.1.0"
