"""The one error type for user mistakes."""

from __future__ import annotations


class LrkitError(ValueError):
    """A user mistake: the message says what was wrong and how to fix it."""


def missing_extra(package: str, extra: str) -> LrkitError:
    """Error for an optional framework that is not installed, naming the extra that installs it."""
    return LrkitError(
        f"this feature needs the '{package}' package, which is not installed; "
        f"install it with: pip install 'lrkit[{extra}]'"
    )
