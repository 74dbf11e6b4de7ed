"""himari-jax: FLAG-TRADER transformer trading agents in JAX/Flax."""

__version__ = '0.1.0'
