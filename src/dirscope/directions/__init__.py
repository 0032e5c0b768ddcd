"""Direction families (``basis``, ``random:N``, ``rotation[:ALPHA]``, ``pca:N``, ``file:PATH``) and their combination."""

from __future__ import annotations

from .base import FAMILIES, FamilyBlock, FamilyContext, normalize_rows

__all__ = ["FAMILIES", "FamilyBlock", "FamilyContext", "normalize_rows"]
