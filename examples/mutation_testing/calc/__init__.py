"""A tiny package with gremlins (mutants) built in, switched on by ``ACTIVE_GREMLIN``."""

from .core import add, clamp, discount, is_adult, mean, sign

__all__ = ["add", "clamp", "discount", "is_adult", "mean", "sign"]
