"""Fixtures of the search tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def log(tmp_path, monkeypatch):
    """A file where the toy training functions log ``start LR SEED PID`` (see search_toys)."""
    path = str(tmp_path / "calls.log")
    open(path, "w").close()
    monkeypatch.setenv("LRKIT_TEST_LOG", path)
    return path
