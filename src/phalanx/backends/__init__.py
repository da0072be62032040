"""Backends: one module per way of running an attempt, all behind `base.Backend`."""
