"""Small helpers shared by the command line and the sweep engine."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from lrkit.errors import LrkitError


def load_callable(spec: str) -> Callable[..., Any]:
    """The object named by ``"package.module:attr"`` (the working directory is importable)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise LrkitError(f"expected MODULE:FUNCTION (e.g. my_module:train), got {spec!r}")
    modname, _, attr = spec.partition(":")
    if not modname or not attr:
        raise LrkitError(f"expected MODULE:FUNCTION (e.g. my_module:train), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(modname)
    except Exception as e:
        raise LrkitError(f"cannot import module {modname!r} ({type(e).__name__}: {e}); run from the folder that "
                         "contains it or put it on PYTHONPATH") from e
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LrkitError(f"module {modname!r} has no attribute {attr!r}; check the name after the colon")
        obj = getattr(obj, part)
    if not callable(obj):
        raise LrkitError(f"{spec} is a {type(obj).__name__}, not a function")
    return obj
