"""Recipes: schema dataclasses, strict YAML loading with inheritance and overrides, sweeps."""

from .schema import Recipe  # noqa: F401
