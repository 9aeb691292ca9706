"""lrkit._files: the one way lrkit writes a file — all of it, or nothing."""

from __future__ import annotations

import os
import stat

import pytest

from lrkit._files import atomic_write, atomic_write_text


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")

    def half(f):
        f.write("new and half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_text_and_bytes_land_whole_with_the_permissions_open_gives(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "é\n")
    atomic_write(tmp_path / "b.bin", lambda f: f.write(b"\x00\x01"), binary=True)
    assert (tmp_path / "a.txt").read_bytes() == "é\n".encode() and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with open(tmp_path / "c.txt", "w") as f:
        f.write("x")
    modes = {stat.S_IMODE(os.stat(tmp_path / n).st_mode) for n in ("a.txt", "b.bin", "c.txt")}
    assert len(modes) == 1
