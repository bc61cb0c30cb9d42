"""A real PostgreSQL server for the tests: on loopback, in a temporary data directory.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user; its
directory is made with ``tempfile`` (pytest's temporary folders are private to root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def postgres_server(database: str) -> Iterator[str]:
    """Start a server with one empty ``database``; yield its URL; stop and remove it."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: run scripts/dev.sh setup")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is missing: run scripts/dev.sh setup (a test extra)")
    bin_dir = found[-1].parent
    root = Path(tempfile.mkdtemp(prefix="tfedge-postgres-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    data = root / "data"
    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "tfedge", "--no-sync")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    log = str(root / "log")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", log, "start")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tfedge", database)
        yield f"postgresql://tfedge@127.0.0.1:{port}/{database}"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    """A TCP port on loopback that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
