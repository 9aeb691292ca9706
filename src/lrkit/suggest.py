"""Moved: the suggestion rules are in :mod:`lrkit.finder` (``lrkit.finder.suggest``, ``lrkit.finder.rules``...).

This module only re-exports :class:`~lrkit.finder.Suggestion` for ``lrkit.sweep``'s tests, which import it from
here; it goes when the sweep engine moves to ``lrkit.search`` (issue 24). ``import lrkit`` does not import it.
"""

from __future__ import annotations

from lrkit.finder import Suggestion  # noqa: F401
