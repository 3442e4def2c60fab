"""Backbones (registry), heads and method models.

Backbone families and method models register themselves when imported;
importing the package imports each once. A new backbone family or method model
is its own file plus one line here.
"""

from sbir.models.factory import create_model, list_models, register_model
from sbir.models.registry import create_backbone, list_backbones, register_backbone

# Backbone families (each registers its names with register_backbone).
from sbir.models import efficientnet_lite, vit  # noqa: E402, F401  isort: skip

# Method models (each registers its builder with register_model).
from sbir.models import category, clip_prompt, fgsbir, sketch_classifier  # noqa: E402, F401  isort: skip

__all__ = ["create_backbone", "create_model", "list_backbones", "list_models", "register_backbone", "register_model"]
