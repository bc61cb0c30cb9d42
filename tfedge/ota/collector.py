"""The fleet collector: a small HTTP service storing the agents' status reports in SQLite.

Agents started with ``--report-url http://HOST:PORT/report`` POST one JSON object after each
poll (built by :mod:`tfedge_device.report`) with ``Authorization: Bearer TOKEN``. A request
is checked in this order, each before any more of it is read:

1. the path is ``/report`` and the method POST (else 404 / 405);
2. the token is one of the token file's (else 401): it names the device;
3. the device is within its rate (a token bucket per device, else 429 with Retry-After),
   so one device flooding the collector costs the others nothing;
4. ``Content-Length`` is given (411) and at most ``max_body`` bytes (413); exactly that many
   bytes are read, never more;
5. the body is a JSON object (400) with the required fields of the right types (400) and
   names the token's device (403).

Accepted reports go to SQLite in WAL mode (readers such as ``tfedge ota fleet`` never block
the collector), or to PostgreSQL for a large fleet (``--db postgresql://...``, psycopg; the
same table and view): one row per report in ``reports``, and the ``latest`` view holds each
device's newest report per model. ``received`` is the collector's clock (a device's clock
may be wrong), and the group is the token file's if it gives one, else the report's, else
``default``.

The token file has one device per line: ``DEVICE_ID TOKEN [GROUP]`` (``#`` starts a
comment); tokens are at least 16 characters and unique.

Example:
    >>> tokens = parse_tokens("pi-01 0123456789abcdef0123 canary\\n", "tokens.txt")
    >>> tokens["pi-01"].group
    'canary'
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tfedge.errors import OtaError, UsageError

MAX_BODY = 64 * 1024
BURST, PER_SECOND = 10, 1.0 / 30  # ten reports at once, then one per 30 s per device
READ_TIMEOUT = 10.0  # seconds a client may take to send its request
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
STATES = ("Downloading", "Installing", "Success", "Failure", "RolledBack")

# column: (type check, required)
FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema": ((int,), True),
    "device_id": ((str,), True),
    "name": ((str,), True),
    "state": ((str,), True),
    "group": ((str, type(None)), False),
    "reason": ((str, type(None)), False),
    "message": ((str, type(None)), False),
    "model_version": ((int, type(None)), False),
    "sha256": ((str, type(None)), False),
    "time": ((str, type(None)), False),
    "arch": ((str, type(None)), False),
    "runtime": ((str, type(None)), False),
    "runtime_version": ((str, type(None)), False),
    "free_disk_bytes": ((int, type(None)), False),
    "uptime_s": ((int, float, type(None)), False),
    "agent_version": ((str, type(None)), False),
}
COLUMNS = ("received", "grp", *[f for f in FIELDS if f != "group"])

# The reports table, the same on SQLite and PostgreSQL: (column, SQLite type, PostgreSQL type).
TABLE = (
    ("received", "REAL NOT NULL", "DOUBLE PRECISION NOT NULL"),
    ("grp", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("schema", "INTEGER NOT NULL", "INTEGER NOT NULL"),
    ("device_id", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("name", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("state", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("reason", "TEXT", "TEXT"),
    ("message", "TEXT", "TEXT"),
    ("model_version", "INTEGER", "BIGINT"),
    ("sha256", "TEXT", "TEXT"),
    ("time", "TEXT", "TEXT"),
    ("arch", "TEXT", "TEXT"),
    ("runtime", "TEXT", "TEXT"),
    ("runtime_version", "TEXT", "TEXT"),
    ("free_disk_bytes", "INTEGER", "BIGINT"),
    ("uptime_s", "REAL", "DOUBLE PRECISION"),
    ("agent_version", "TEXT", "TEXT"),
)
ID_COLUMN = {
    "sqlite": "id INTEGER PRIMARY KEY AUTOINCREMENT",
    "postgresql": "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
}
LATEST_VIEW = (
    "SELECT r.* FROM reports r "
    "JOIN (SELECT MAX(id) AS id FROM reports GROUP BY device_id, name) m ON r.id = m.id"
)


def schema_sql(dialect: str) -> list[str]:
    """The statements creating the ``reports`` table, its index and the ``latest`` view."""
    kind = 1 if dialect == "sqlite" else 2
    columns = ",\n    ".join([ID_COLUMN[dialect]] + [f"{c[0]} {c[kind]}" for c in TABLE])
    view = "CREATE VIEW IF NOT EXISTS" if dialect == "sqlite" else "CREATE OR REPLACE VIEW"
    return [
        f"CREATE TABLE IF NOT EXISTS reports (\n    {columns}\n)",
        "CREATE INDEX IF NOT EXISTS reports_device ON reports (device_id, name, id)",
        f"{view} latest AS {LATEST_VIEW}",
    ]


def _insert_sql(mark: str) -> str:
    marks = ", ".join(mark for _ in COLUMNS)
    return f"INSERT INTO reports ({', '.join(COLUMNS)}) VALUES ({marks})"  # noqa: S608


# ---------------------------------------------------------------- tokens
@dataclass(frozen=True)
class Device:
    """One line of the token file."""

    device_id: str
    token: str
    group: str | None = None


def load_tokens(path: Path) -> dict[str, Device]:
    """The token file at ``path``, validated; OtaError naming the line that is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OtaError(
            f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}",
            "give --tokens FILE with one `DEVICE_ID TOKEN [GROUP]` line per device",
        ) from exc
    return parse_tokens(text, str(path))


def parse_tokens(text: str, where: str) -> dict[str, Device]:
    """``{device_id: Device}`` from token-file text; OtaError naming the bad line."""
    devices: dict[str, Device] = {}
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        problem = _line_problem(fields, devices, seen)
        if problem:
            raise OtaError(
                f"{where} line {number}: {problem}",
                "write `DEVICE_ID TOKEN [GROUP]` (a token of at least 16 characters, "
                "one line per device, ids and tokens unique)",
            )
        devices[fields[0]] = Device(fields[0], fields[1], fields[2] if len(fields) == 3 else None)
        seen.add(fields[1])
    if not devices:
        raise OtaError(f"{where} lists no device", "add a `DEVICE_ID TOKEN [GROUP]` line")
    return devices


def _line_problem(fields: list[str], devices: dict, tokens: set[str]) -> str | None:
    if len(fields) not in (2, 3):
        return f"expected 2 or 3 fields, got {len(fields)}"
    names = [fields[0]] + fields[2:]
    bad = [n for n in names if not _valid_name(n)]
    if bad:
        return f"{bad[0]!r} is not a valid id or group (letters, digits, '.', '_', '-')"
    if fields[0] in devices:
        return f"device {fields[0]!r} is listed twice"
    if len(fields[1]) < 16 or not fields[1].isascii() or not fields[1].isprintable():
        return f"the token of {fields[0]!r} is shorter than 16 characters or not ASCII"
    if fields[1] in tokens:
        return f"the token of {fields[0]!r} is another device's"
    return None


def _valid_name(text: str) -> bool:
    return 0 < len(text) <= 64 and set(text) <= NAME_CHARS and text[0] not in "._-"


def _token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# ---------------------------------------------------------------- storage
class SqliteStore:
    """Reports in a SQLite file (WAL mode); safe to call from the server's threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:
                for statement in schema_sql("sqlite"):
                    self._db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise OtaError(
                f"cannot open the fleet database {self.path}: {exc}",
                "give --db a writable SQLite file path",
            ) from exc

    def add(self, row: dict[str, Any]) -> None:
        with self._lock, self._db:
            self._db.execute(_insert_sql("?"), [row.get(c) for c in COLUMNS])

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM reports").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresStore:
    """Reports in PostgreSQL (``postgresql://...``), the same table and view as SQLite; one
    connection in autocommit mode shared by the server's threads."""

    def __init__(self, url: str) -> None:
        self.path = redact(url)
        psycopg = import_psycopg()
        self._lock = threading.Lock()
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
            with self._db.transaction():
                for statement in schema_sql("postgresql"):
                    self._db.execute(statement)
        except psycopg.Error as exc:
            raise OtaError(
                f"cannot open the fleet database {self.path}: {_first_line(exc)}",
                "check the URL, that the server runs and that the user may create tables",
            ) from exc

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(_insert_sql("%s"), [row.get(c) for c in COLUMNS])

    def count(self) -> int:
        with self._lock:
            found = self._db.execute("SELECT COUNT(*) FROM reports").fetchone()
            return int(found[0]) if found else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(db: str | Path) -> SqliteStore | PostgresStore:
    """The store named by ``--db``: a SQLite file path, or a ``postgresql://`` URL."""
    text = str(db)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text)
    check_db_form(text)
    return SqliteStore(Path(text))


def check_db_form(db: str) -> None:
    """UsageError for a ``--db`` URL that is not PostgreSQL's (a path is fine)."""
    if "://" in db and not db.startswith(("postgresql://", "postgres://")):
        raise UsageError(
            f"--db {redact(db)}: unknown database URL",
            "give a SQLite file path or a postgresql://USER@HOST:PORT/DB URL",
        )


def import_psycopg():
    try:
        import psycopg
    except ImportError as exc:
        raise OtaError(
            "a postgresql:// --db needs the psycopg package",
            "pip install 'psycopg[binary]', or give a SQLite file path",
        ) from exc
    return psycopg


def redact(url: str) -> str:
    """``url`` without its password (for messages)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}" if ":" in credentials else url


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# ---------------------------------------------------------------- rate limiting
class RateLimiter:
    """A token bucket per device: ``burst`` reports at once, then ``per_second``."""

    def __init__(self, burst: float = BURST, per_second: float = PER_SECOND, clock=None) -> None:
        self.burst, self.per_second = float(burst), float(per_second)
        self.clock = clock or time.monotonic
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> float:
        """0.0 if ``key`` may send now (and takes one token), else the seconds to wait."""
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.per_second)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.per_second if self.per_second > 0 else 3600.0


# ---------------------------------------------------------------- validation
class Rejected(Exception):
    """A request refused with an HTTP ``status``."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def check_report(data: Any, device: Device, received: float) -> dict[str, Any]:
    """The row to store for ``data`` sent with ``device``'s token, or Rejected (400/403)."""
    if not isinstance(data, dict):
        raise Rejected(400, "the report must be a JSON object")
    for key, (types, required) in FIELDS.items():
        if key not in data:
            if required:
                raise Rejected(400, f"the report has no {key!r}")
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise Rejected(400, f"{key!r} has the wrong type ({type(value).__name__})")
        if isinstance(value, str) and len(value) > 1000:
            raise Rejected(400, f"{key!r} is too long")
    if data["device_id"] != device.device_id:
        raise Rejected(403, f"the token is not device {data['device_id']!r}'s")
    if data["state"] not in STATES:
        raise Rejected(400, f"unknown state {data['state']!r}")
    group = device.group or data.get("group") or "default"
    if not _valid_name(group) or not _valid_name(data["name"]):
        raise Rejected(400, "the model name or group is not a valid name")
    row = {k: data.get(k) for k in FIELDS if k != "group"}
    return dict(row, grp=group, received=received)


# ---------------------------------------------------------------- the HTTP service
class CollectorServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` holding the tokens, the store and the rate limiter."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog (socketserver's 5 resets a fleet reporting at once)

    def __init__(
        self,
        address: tuple[str, int],
        tokens: dict[str, Device],
        store: SqliteStore | PostgresStore | None,
        max_body: int = MAX_BODY,
        limiter: RateLimiter | None = None,
        log=None,
    ) -> None:
        self.devices = {_token_key(d.token): d for d in tokens.values()}
        self.store, self.max_body = store, max_body
        self.limiter = limiter or RateLimiter()
        self.log = log or (lambda message: None)
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/report"

    def device_for(self, authorization: str | None) -> Device:
        scheme, _, token = (authorization or "").partition(" ")
        device = self.devices.get(_token_key(token.strip())) if scheme == "Bearer" else None
        if device is None or not hmac.compare_digest(device.token, token.strip()):
            raise Rejected(401, "missing or unknown token", {"WWW-Authenticate": "Bearer"})
        return device


class _Handler(BaseHTTPRequestHandler):
    server: CollectorServer
    timeout = READ_TIMEOUT
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        try:
            self._accept()
            self._answer(200, {"ok": True})
        except Rejected as err:
            self.server.log(f"{self.client_address[0]} {err.status} {err.message}")
            self._answer(err.status, {"error": err.message}, err.headers)
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802
        self._answer(405 if self.path == "/report" else 404, {"error": "POST /report only"})
        self.close_connection = True

    do_PUT = do_DELETE = do_GET  # noqa: N815

    def _accept(self) -> None:
        if self.path != "/report":
            raise Rejected(404, "POST /report only")
        device = self.server.device_for(self.headers.get("Authorization"))
        wait = self.server.limiter.allow(device.device_id)
        if wait:
            raise Rejected(
                429,
                f"too many reports from {device.device_id}",
                {"Retry-After": str(int(wait) + 1)},
            )
        body = self._body()
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Rejected(400, f"malformed JSON: {exc}") from exc
        row = check_report(data, device, time.time())
        if self.server.store is None:
            raise Rejected(503, "the collector is starting")
        self.server.store.add(row)

    def _body(self) -> bytes:
        length_text = self.headers.get("Content-Length")
        if length_text is None or self.headers.get("Transfer-Encoding"):
            raise Rejected(411, "a Content-Length is required")
        try:
            length = int(length_text)
        except ValueError as exc:
            raise Rejected(400, "bad Content-Length") from exc
        if length < 0:
            raise Rejected(400, "bad Content-Length")
        if length > self.server.max_body:
            raise Rejected(413, f"the report is larger than {self.server.max_body} bytes")
        body = self.rfile.read(length)
        if len(body) != length:
            raise Rejected(400, "the report ended early")
        return body

    def _answer(self, status: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        pass  # rejections are logged by do_POST; accepted reports are in the database


def make_collector(
    tokens_file: Path,
    db: str | Path,
    host: str = "127.0.0.1",
    port: int = 8700,
    max_body: int = MAX_BODY,
    limiter: RateLimiter | None = None,
    log=None,
) -> CollectorServer:
    """A collector bound to ``host:port`` (0 picks a free port), not yet serving.

    Everything is checked before the database is created: the token file, the --db form,
    then the port.
    """
    tokens = load_tokens(tokens_file)
    check_db_form(str(db))
    try:
        server = CollectorServer((host, port), tokens, None, max_body, limiter, log)
    except OSError as exc:
        why = "address already in use" if exc.errno == errno.EADDRINUSE else str(exc)
        raise OtaError(
            f"cannot listen on {host}:{port}: {why}",
            "choose another --port (0 picks a free one) or stop the other service",
        ) from exc
    try:
        server.store = open_store(db)
    except Exception:
        server.server_close()
        raise
    return server
