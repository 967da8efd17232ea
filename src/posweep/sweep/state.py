"""The sweep's state: run status in SQLite, and the lock that keeps one driver per folder.

``state.sqlite`` holds one row per run (pending / running / done / failed, timings, error, traceback) and
the sweep's pinned context; only the driver writes it, one short transaction per change, so a kill loses
nothing. A file that is not posweep's state is refused with a one-line ``SweepError``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from posweep.config import UserError
from posweep.sweep.plan import PlannedRun, RunOutcome

RUN_COLUMNS = ["run_id", "method", "stage", "hparams", "config_hash", "status", "error", "traceback", "started_at",
               "finished_at", "duration_s", "pid"]
RUNS_TABLE = ("CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, method TEXT NOT NULL, stage TEXT NOT NULL,"
              " hparams TEXT NOT NULL, config_hash TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',"
              " error TEXT, traceback TEXT, started_at TEXT, finished_at TEXT, duration_s REAL, pid INTEGER)")


class SweepError(UserError, RuntimeError):
    """The sweep cannot go on (e.g. every SFT run failed, the folder is in use or is not a sweep's)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StateDB:
    """Run status in ``state.sqlite`` (WAL; one short transaction per change, so a kill loses nothing)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.connection = sqlite3.connect(path, timeout=60)
        self.connection.row_factory = sqlite3.Row
        try:
            self.connection.execute("PRAGMA journal_mode=WAL")
            self._check_tables()
            with self.connection:
                self.connection.execute(RUNS_TABLE)
                self.connection.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except sqlite3.DatabaseError as error:
            self.connection.close()
            raise SweepError(f"{self.path}: not a posweep sweep state ({error}); the folder belongs to another "
                             "tool or the file is damaged: choose another --out") from None

    def _check_tables(self) -> None:
        """A state file is empty (new) or has exactly posweep's tables and run columns."""
        tables = {row[0] for row in self.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return
        columns = [row[1] for row in self.connection.execute("PRAGMA table_info(runs)")]
        if tables != {"runs", "meta"} or columns != RUN_COLUMNS:
            raise sqlite3.DatabaseError(f"tables {sorted(tables)}, run columns {columns}")

    def close(self) -> None:
        self.connection.close()

    def get_meta(self, key: str) -> Any:
        row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row["value"])

    def set_meta(self, key: str, value: Any) -> None:
        with self.connection:
            self.connection.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    def add_runs(self, runs: list[PlannedRun], config_hash: str) -> None:
        """Insert planned runs as pending; runs already known keep their status."""
        with self.connection:
            self.connection.executemany(
                "INSERT OR IGNORE INTO runs (run_id, method, stage, hparams, config_hash) VALUES (?, ?, ?, ?, ?)",
                [(r.run_id, r.method, r.stage, json.dumps(r.params()), config_hash) for r in runs])

    def requeue(self, keep: set[str], retry_failed: bool) -> None:
        """Before a sweep starts: runs a dead process left "running" (and failed runs, if asked) become
        pending again; unfinished runs the config no longer plans are forgotten."""
        statuses = ("running", "failed") if retry_failed else ("running",)
        with self.connection:
            self.connection.execute(
                f"UPDATE runs SET status = 'pending', error = NULL, traceback = NULL, pid = NULL "
                f"WHERE status IN ({', '.join('?' * len(statuses))})", statuses)
            stale = [row["run_id"] for row in self.connection.execute("SELECT run_id FROM runs WHERE status = 'pending'")
                     if row["run_id"] not in keep]
            self.connection.executemany("DELETE FROM runs WHERE run_id = ?", [(run_id,) for run_id in stale])

    def status(self, run_id: str) -> str | None:
        row = self.connection.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else row["status"]

    def count(self, *statuses: str, stage: str | None = None) -> int:
        query = f"SELECT COUNT(*) FROM runs WHERE status IN ({', '.join('?' * len(statuses))})"
        arguments = list(statuses)
        if stage:
            query, arguments = query + " AND stage = ?", arguments + [stage]
        return self.connection.execute(query, arguments).fetchone()[0]

    def mark_running(self, run_id: str, pid: int) -> None:
        with self.connection:
            self.connection.execute("UPDATE runs SET status = 'running', started_at = ?, pid = ?, finished_at = NULL,"
                                    " error = NULL, traceback = NULL WHERE run_id = ?", (_now(), pid, run_id))

    def mark_finished(self, outcome: RunOutcome) -> None:
        with self.connection:
            self.connection.execute(
                "UPDATE runs SET status = ?, error = ?, traceback = ?, finished_at = ?, duration_s = ?,"
                " pid = COALESCE(?, pid) WHERE run_id = ?",
                (outcome.status, outcome.error, outcome.traceback_tail, _now(), outcome.duration_s, outcome.pid,
                 outcome.run_id))

    def runs(self) -> list[dict]:
        return [dict(row) for row in self.connection.execute("SELECT * FROM runs ORDER BY rowid")]


@contextmanager
def sweep_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the sweep folder: one driver per folder. The OS drops it when the
    process dies, so every run still marked "running" at the next start was left by a dead process."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"{out_dir} is in use by another posweep sweep process") from None
        yield
    finally:
        os.close(fd)
