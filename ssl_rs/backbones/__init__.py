"""Backbone registry: timm models with any band count, and a tiny CNN for tests."""

from .timm_backbones import Backbone, TinyCNN, create_backbone

__all__ = ["Backbone", "TinyCNN", "create_backbone"]
