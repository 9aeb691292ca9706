"""A throw-away PostgreSQL server for tests: initdb in a temporary folder, started on a free port on 127.0.0.1.

Uses Debian's ``postgresql`` package (binaries under ``/usr/lib/postgresql/*/bin``). initdb refuses to run as
root, so as root the cluster is created and run by the ``postgres`` user in a folder it owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator


def find_bin(name: str) -> str | None:
    """The path of a PostgreSQL server program (initdb, pg_ctl), or None when the server is not installed."""
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(dbname: str = "lrkit") -> Iterator[str]:
    """Start a PostgreSQL server with database ``dbname``; yield its URL; stop it and delete its files."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    as_root = os.geteuid() == 0
    folder = tempfile.mkdtemp(prefix="lrkit-pg-")
    data, log = os.path.join(folder, "data"), os.path.join(folder, "server.log")
    if as_root:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(folder, pw.pw_uid, pw.pw_gid)

    def run(cmd: list[str]) -> None:
        if as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=folder, timeout=120)

    port = _free_port()
    started = False
    try:
        run([initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        opts = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        run([pg_ctl, "-D", data, "-l", log, "-o", opts, "-w", "-t", "60", "start"])
        started = True
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {dbname}")
        conn.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/{dbname}"
    finally:
        if started:
            with contextlib.suppress(Exception):
                run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)
