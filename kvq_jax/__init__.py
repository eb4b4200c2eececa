"""kvq_jax: JAX/Flax video quality assessment for short-form UGC (DOVER, FAST-VQA and friends)."""

__version__ = "0.1.0"
