"""The state store: what the gateway and the operations code keep across restarts.

Two shapes hold everything kept so far: a value per key (a model's canary) and an
append-only log per name (a model's deploy history), each a JSON object. The default backend
is an SQLite file (``var/state.db`` beside the local stack, a named volume in Compose) in WAL
mode, so a deploy writing and the gateway reading never block each other; ``redis://...``
selects Redis, for several gateways that share one state. ``open_store`` picks by the
location's shape; both backends answer the same six calls.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol


class StateError(Exception):
    """The store cannot be opened, read or written (a bad path, a Redis that does not answer)."""


class StateStore(Protocol):
    location: str

    def get(self, key: str) -> dict | None: ...

    def put(self, key: str, value: dict) -> None: ...

    def delete(self, key: str) -> bool: ...

    def append(self, log: str, entry: dict) -> None: ...

    def entries(self, log: str) -> list[dict]: ...

    def scan(self, prefix: str) -> list[tuple[str, dict]]: ...

    def close(self) -> None: ...


def canary_key(model: str) -> str:
    return f"canary/{model}"


def history_log(model: str) -> str:
    return f"history/{model}"


def history_entry(
    action: str, version: str, previous: str | None, who: str, result: str = "ok", sha256: str | None = None, **extra
) -> dict:
    """One entry of a model's deploy history, the same shape whoever writes it."""
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": who,
        "action": action,
        "version": version,
        "previous": previous,
        "sha256": sha256,
        "result": result,
        **extra,
    }


class SQLiteStore:
    """One SQLite file; safe to share between threads of a process and between processes."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS log"
        " (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, entry TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS log_by_name ON log (name, id)",
    )

    def __init__(self, path: Path):
        self.location = str(path)
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            for statement in self.SCHEMA:
                self._db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the state store {path}: {exc}") from exc

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"state store {self.location}: {exc}") from exc

    def get(self, key: str) -> dict | None:
        rows = self._run("SELECT value FROM kv WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def put(self, key: str, value: dict) -> None:
        self._run(
            "INSERT INTO kv (key, value, updated) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
            (key, json.dumps(value), time.time()),
        )

    def delete(self, key: str) -> bool:
        return bool(self._run("DELETE FROM kv WHERE key = ? RETURNING key", (key,)))

    def append(self, log: str, entry: dict) -> None:
        self._run("INSERT INTO log (name, entry) VALUES (?, ?)", (log, json.dumps(entry)))

    def entries(self, log: str) -> list[dict]:
        return [json.loads(row[0]) for row in self._run("SELECT entry FROM log WHERE name = ? ORDER BY id", (log,))]

    def scan(self, prefix: str) -> list[tuple[str, dict]]:
        """Every (key, value) whose key starts with ``prefix``, in key order (a range of the primary key)."""
        rows = self._run(
            "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key", (prefix, prefix + "\U0010ffff")
        )
        return [(key, json.loads(value)) for key, value in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisStore:
    """The same calls on a Redis server: a string per key, a list per log, under one prefix."""

    def __init__(self, url: str, prefix: str = "yolo-serving:"):
        import redis

        self.location = url
        self._prefix = prefix
        self._errors = (redis.RedisError, OSError)
        try:
            self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)
            self._redis.ping()
        except (*self._errors, ValueError) as exc:
            raise StateError(f"cannot reach the state store {url}: {exc}") from exc

    def _call(self, method: str, *args):
        try:
            return getattr(self._redis, method)(*args)
        except self._errors as exc:
            raise StateError(f"state store {self.location}: {exc}") from exc

    def get(self, key: str) -> dict | None:
        value = self._call("get", f"{self._prefix}kv:{key}")
        return json.loads(value) if value is not None else None

    def put(self, key: str, value: dict) -> None:
        self._call("set", f"{self._prefix}kv:{key}", json.dumps(value))

    def delete(self, key: str) -> bool:
        return bool(self._call("delete", f"{self._prefix}kv:{key}"))

    def append(self, log: str, entry: dict) -> None:
        self._call("rpush", f"{self._prefix}log:{log}", json.dumps(entry))

    def entries(self, log: str) -> list[dict]:
        return [json.loads(item) for item in self._call("lrange", f"{self._prefix}log:{log}", 0, -1)]

    def scan(self, prefix: str) -> list[tuple[str, dict]]:
        """Every (key, value) whose key starts with ``prefix``, in key order."""
        start = f"{self._prefix}kv:"
        pattern = start + "".join(f"[{c}]" if c in "*?[]\\^" else c for c in prefix) + "*"
        try:
            keys = sorted(self._redis.scan_iter(match=pattern, count=500))
        except self._errors as exc:
            raise StateError(f"state store {self.location}: {exc}") from exc
        values = self._call("mget", keys) if keys else []
        return [(key[len(start) :], json.loads(v)) for key, v in zip(keys, values, strict=True) if v is not None]

    def close(self) -> None:
        self._redis.close()


def open_store(location: str | Path) -> StateStore:
    """``redis://`` or ``rediss://`` URLs open Redis; anything else is an SQLite file's path."""
    text = str(location)
    if text.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(text)
    return SQLiteStore(Path(text))
