"""mscross: supervised cross-modal retrieval with adversarial training in JAX/Flax."""

__version__ = "0.1.0"
