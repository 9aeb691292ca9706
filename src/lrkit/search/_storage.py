"""Optuna storages from what a user types: an SQLite file, a PostgreSQL (or other SQLAlchemy) URL, an Optuna
journal file, or ``"memory"``; opened with Optuna's heartbeat and its retry of a lost worker's trial.

Two things Optuna leaves to its user are handled here:

* SQLite: Optuna takes a waiting trial by reading its state and then writing RUNNING. Python's ``sqlite3`` runs the
  read outside the transaction, so two processes can take the same trial (4 processes on 40 queued trials ran 37
  trials for 35 lrs in a trial run). lrkit's SQLite connections open every transaction with ``BEGIN IMMEDIATE``
  (SQLAlchemy documents taking over BEGIN on pysqlite), which makes the read and the write one atomic step.
* A fresh database: several processes that create Optuna's tables at the same instant collide in the database's
  catalogue (PostgreSQL: UniqueViolation on ``pg_type``); the loser retries, and then finds the tables made.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
import warnings
from collections.abc import Callable
from typing import Any

from lrkit.errors import LrkitError, missing_extra

DEFAULT_STORAGE_FILE = "lrkit-sweep.db"
JOURNAL_SUFFIXES = (".jsonl", ".log", ".journal")
_MIN_OPTUNA = (4, 9)  # RetryHeartbeatStaleTrialCallback and RDBStorage(heartbeat_stale_trial_callback=...)


def optuna_module() -> Any:
    """``optuna``, or a clear error naming the extra (missing) or the version needed (too old)."""
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - exercised only without optuna
        raise missing_extra("optuna", "sweep") from e
    version = tuple(int(p) for p in optuna.__version__.split(".")[:2] if p.isdigit())
    if version < _MIN_OPTUNA:  # pragma: no cover - the test machine has a current optuna
        raise LrkitError(f"lrkit's sweeps need optuna >= {'.'.join(map(str, _MIN_OPTUNA))}, found "
                         f"{optuna.__version__}; upgrade with: pip install -U optuna")
    return optuna


def normalise(storage: Any) -> str:
    """The canonical form of a storage: ``memory``, ``journal:/abs/path``, ``sqlite:////abs/path`` or a URL.

    ``None`` is the SQLite file ``lrkit-sweep.db`` in the working directory; a path ending in .jsonl, .log or
    .journal (or written ``journal:PATH``) is an Optuna journal file; any other path is an SQLite file."""
    if storage is None:
        return "sqlite:///" + os.path.abspath(DEFAULT_STORAGE_FILE)
    if not isinstance(storage, (str, os.PathLike)):
        raise LrkitError(f"storage must be a URL or a file path, got {type(storage).__name__}; e.g. "
                         "'sweep.db' (SQLite), 'postgresql://user:pw@host/db' or 'sweep.jsonl' (journal file)")
    s = os.fspath(storage).strip()
    if s in ("memory", ":memory:", "sqlite://", "sqlite:///:memory:"):  # an SQLite in memory is one per connection
        return "memory"
    if s.startswith(("postgresql:", "postgres:")):
        return "postgresql:" + s.split(":", 1)[1]
    if s.startswith("journal:"):
        return "journal:" + os.path.abspath(s[len("journal:"):])
    if s.startswith("sqlite:///"):
        rest = s[len("sqlite:///"):]
        return "sqlite:///" + (rest if rest.startswith("/") else os.path.abspath(rest))
    if "://" in s:
        return s
    if s.endswith(JOURNAL_SUFFIXES):
        return "journal:" + os.path.abspath(s)
    return "sqlite:///" + os.path.abspath(s)


def kind(url: str) -> str:
    """'memory', 'journal', 'sqlite' or 'rdb' (a database server) for a :func:`normalise`-d storage."""
    if url == "memory":
        return "memory"
    if url.startswith("journal:"):
        return "journal"
    return "sqlite" if url.startswith("sqlite") else "rdb"


def safe_url(url: str) -> str:
    """The storage as it may be printed: a password in the URL replaced by ``***``, a file as its path."""
    if url.startswith("journal:"):
        return url[len("journal:"):]
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):]
    if "://" in url and "@" in url:
        head, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            return f"{head}://{cred.split(':')[0]}:***@{host}"
    return url


def open_storage(url: str, heartbeat_interval: int | None = 10, grace_period: int | None = None,
                 max_retry: int = 3) -> Any:
    """A new Optuna storage for this process. Database storages get Optuna's heartbeat (every
    ``heartbeat_interval`` s; a trial without one for ``grace_period`` s, default 3 intervals, is failed by the next
    worker that asks for a trial) and :class:`optuna.storages.RetryHeartbeatStaleTrialCallback`, which queues it
    again (at most ``max_retry`` times). Journal files and memory have no heartbeat in Optuna."""
    optuna = optuna_module()
    k = kind(url)
    if k == "memory":
        return optuna.storages.InMemoryStorage()
    if k == "journal":
        path = url[len("journal:"):]
        _check_journal(path)
        try:
            storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
            storage.get_all_studies()  # reads the whole file now, so a damaged one fails here and not mid-sweep
            return storage
        except (KeyError, ValueError, TypeError) as e:  # a later line is not a journal record
            raise LrkitError(f"storage {path} is not a readable Optuna journal file ({type(e).__name__}: {e}); "
                             "give a new file name, or a .db name for an SQLite file") from e
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        with warnings.catch_warnings():  # Optuna marks its heartbeat experimental; lrkit relies on it knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        kwargs.update(heartbeat_interval=int(heartbeat_interval),
                      grace_period=int(grace_period or 3 * heartbeat_interval), heartbeat_stale_trial_callback=retry)
    if k == "sqlite":
        path = url[len("sqlite:///"):]
        _check_sqlite(path)
        # Optuna's set-up (tables, schema version) nests two connections, which would wait on each other under
        # BEGIN IMMEDIATE: its connections take the write lock per transaction only once it is done
        mode = {"immediate": False}
        storage = _rdb(optuna, url, {**kwargs, "engine_kwargs": {"creator": _sqlite_connect(path, mode)}})
        mode["immediate"] = True
        return storage
    return _rdb(optuna, _with_driver(url), kwargs)


def has_heartbeat(storage: Any) -> bool:
    """Whether Optuna keeps a heartbeat of running trials in this storage (then a lost worker's trial is redone)."""
    get = getattr(storage, "get_heartbeat_interval", None)
    return bool(get and get())


def _rdb(optuna: Any, url: str, kwargs: dict[str, Any]) -> Any:
    import sqlalchemy.exc as sa_exc

    for attempt in range(8):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)
        except ImportError as e:
            raise LrkitError(f"cannot open storage {safe_url(url)}: {e}; for PostgreSQL install "
                             "'lrkit[postgres]' (psycopg2)") from e
        except (sa_exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            text = f"{e} {e.__cause__ or ''}".lower()
            collided = isinstance(e, sa_exc.IntegrityError) or isinstance(e.__cause__, sa_exc.IntegrityError) \
                or any(w in text for w in ("already exists", "duplicate key", "unique constraint"))
            if attempt < 7 and collided:
                time.sleep(0.05 * (attempt + 1) + random.random() * 0.1)  # another process made the tables
                continue
            first = str(e.__cause__ or e).strip().splitlines()[0]
            raise LrkitError(f"cannot open storage {safe_url(url)}: {first}; check the URL, that the database "
                             "server runs and that the database exists") from e
    raise AssertionError("unreachable")  # pragma: no cover


def _with_driver(url: str) -> str:
    """``postgresql://`` with the installed driver: SQLAlchemy 2.1 defaults to psycopg 3; fall back to psycopg2."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


class _ImmediateCursor(sqlite3.Cursor):
    """A cursor that opens a transaction with ``BEGIN IMMEDIATE`` before the first statement outside one (once its
    connection's ``mode["immediate"]`` is set)."""

    def _begin(self) -> None:
        if self.connection.mode["immediate"] and not self.connection.in_transaction:
            super().execute("BEGIN IMMEDIATE")

    def execute(self, sql: str, parameters: Any = ()) -> Any:  # type: ignore[override]
        self._begin()
        return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any) -> Any:  # type: ignore[override]
        self._begin()
        return super().executemany(sql, seq_of_parameters)


class _ImmediateConnection(sqlite3.Connection):
    mode: dict[str, bool]

    def cursor(self, factory: Any = None) -> Any:  # type: ignore[override]
        return super().cursor(factory or _ImmediateCursor)


def _sqlite_connect(path: str, mode: dict[str, bool]) -> Callable[[], sqlite3.Connection]:
    """Connections in WAL mode with synchronous=NORMAL (a commit without an fsync: ~0.1 ms instead of ~15 ms)
    that wait up to 120 s for a lock instead of failing, and, while ``mode["immediate"]``, take the write lock when
    a transaction starts. With ``isolation_level=None`` sqlite3 leaves BEGIN to the cursor; COMMIT and ROLLBACK
    still come from SQLAlchemy."""

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=120, check_same_thread=False, isolation_level=None,
                               factory=_ImmediateConnection)
        conn.mode = mode
        setup = sqlite3.Cursor(conn)  # outside any transaction: the journal mode cannot change inside one
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("PRAGMA synchronous=NORMAL")
        setup.close()
        return conn

    return connect


def _check_sqlite(path: str) -> None:
    if os.path.isdir(path):
        raise LrkitError(f"storage {path} is a folder; give a file name such as {os.path.join(path, 'sweep.db')}")
    if not os.path.isdir(os.path.dirname(path) or "."):
        raise LrkitError(f"the folder of storage {path} does not exist; create it or choose another path")
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            head = f.read(16)
        if head != b"SQLite format 3\x00":
            raise LrkitError(f"storage {path} is not an SQLite database; give a new file name, or a .jsonl name "
                             "for an Optuna journal file")


def _check_journal(path: str) -> None:
    if os.path.isdir(path):
        raise LrkitError(f"storage {path} is a folder; give a file name such as "
                         f"{os.path.join(path, 'sweep.jsonl')}")
    if not os.path.isdir(os.path.dirname(path) or "."):
        raise LrkitError(f"the folder of storage {path} does not exist; create it or choose another path")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):  # being written by another process: Optuna reads it later
                break
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not (isinstance(record, dict) and "op_code" in record):
                raise LrkitError(f"storage {path} is not an Optuna journal file (line {number} is not a journal "
                                 "record); give a new file name, or a .db name for an SQLite file")
