"""The fleet view: what every device runs, read from the collector's database.

:func:`fleet_view` reads the ``latest`` view (each device's newest report per model) of the
database ``tfedge ota collector`` writes (a SQLite file or PostgreSQL), and summarises it:

* **versions by group**: how many devices of each group run each version of each model;
* **failing**: devices whose last report is ``Failure`` or ``RolledBack``, with the reason;
* **stale**: devices not heard from for longer than ``stale`` seconds (the collector's
  clock, not the device's);
* **rollout**: per model, how many devices run the highest version any device reports.

``FleetView.to_dict()`` is the ``--json`` output and :func:`fleet_html` a self-contained
page (inline CSS, no script, no network).

Example:
    >>> parse_duration("90m"), parse_duration("2d")
    (5400.0, 172800.0)
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path

from tfedge.errors import OtaError, UsageError
from tfedge.ota import collector
from tfedge.render import page, section, table
from tfedge.render.html import paragraph

FAILING = ("Failure", "RolledBack")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEVICE_KEYS = (
    "device_id",
    "name",
    "grp",
    "state",
    "reason",
    "message",
    "model_version",
    "sha256",
    "received",
    "arch",
    "runtime",
    "runtime_version",
    "free_disk_bytes",
    "uptime_s",
    "agent_version",
)
LATEST_SQL = f"SELECT {', '.join(DEVICE_KEYS)} FROM latest ORDER BY grp, name, device_id"  # noqa: S608


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``1h``, ``2d`` (or a plain number of seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise UsageError(
            f"--stale {text!r} is not a duration", "write a positive number with s, m, h or d"
        )
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


@dataclass
class FleetView:
    """The summary ``tfedge ota fleet`` prints."""

    db: str
    now: float
    stale_after_s: float
    devices: list[dict] = field(default_factory=list)
    versions: list[dict] = field(default_factory=list)
    failing: list[dict] = field(default_factory=list)
    stale: list[dict] = field(default_factory=list)
    rollout: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def read_latest(db: str | Path) -> list[dict]:
    """Each device's newest report per model, from the collector's database ``db`` (a SQLite
    file, opened read-only, or a ``postgresql://`` URL)."""
    text = str(db)
    if text.startswith(("postgresql://", "postgres://")):
        return _read_postgres(text)
    collector.check_db_form(text)
    path = Path(text)
    if not path.is_file():
        raise OtaError(
            f"no fleet database at {path}",
            "give the --db file `tfedge ota collector` writes (default DIR/fleet.sqlite)",
        )
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30) as con:
            con.row_factory = sqlite3.Row
            rows = con.execute(LATEST_SQL).fetchall()
    except sqlite3.Error as exc:
        raise OtaError(
            f"{path} is not a fleet database ({exc})",
            "give the --db file `tfedge ota collector` writes",
        ) from exc
    return [dict(row) for row in rows]


def _read_postgres(url: str) -> list[dict]:
    psycopg = collector.import_psycopg()
    from psycopg.rows import dict_row

    try:
        with psycopg.connect(url, connect_timeout=10, row_factory=dict_row) as con:
            return list(con.execute(LATEST_SQL).fetchall())
    except psycopg.Error as exc:
        raise OtaError(
            f"cannot read the fleet database {collector.redact(url)}: "
            f"{(str(exc).strip().splitlines() or ['?'])[0]}",
            "give the URL `tfedge ota collector --db` writes to, with a running server",
        ) from exc


def fleet_view(
    db: str | Path, stale_after_s: float = 3600.0, now: float | None = None
) -> FleetView:
    """The fleet's summary from ``db``; devices silent for over ``stale_after_s`` are stale."""
    now = time.time() if now is None else now
    devices = [_device(row, now, stale_after_s) for row in read_latest(db)]
    return FleetView(
        collector.redact(str(db)),
        now,
        stale_after_s,
        devices,
        versions=_versions(devices),
        failing=[d for d in devices if d["state"] in FAILING],
        stale=[d for d in devices if d["stale"]],
        rollout=_rollout(devices),
    )


def _device(row: dict, now: float, stale_after_s: float) -> dict:
    age = max(0.0, now - float(row["received"]))
    device = {k: row[k] for k in DEVICE_KEYS if k != "grp"}
    return dict(
        device,
        group=row["grp"],
        seen=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["received"])),
        age_s=round(age, 1),
        stale=age > stale_after_s,
    )


def _versions(devices: list[dict]) -> list[dict]:
    counts = Counter((d["group"], d["name"], d["model_version"]) for d in devices)
    return [
        {"group": g, "name": n, "model_version": v, "devices": c}
        for (g, n, v), c in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1], _v(kv)))
    ]


def _v(item) -> int:
    version = item[0][2]
    return -1 if version is None else -int(version)


def _rollout(devices: list[dict]) -> list[dict]:
    by_model: dict[str, list[dict]] = defaultdict(list)
    for device in devices:
        by_model[device["name"]].append(device)
    rows = []
    for name, members in sorted(by_model.items()):
        versions = [d["model_version"] for d in members if d["model_version"] is not None]
        latest = max(versions, default=None)
        on = sum(1 for d in members if latest is not None and d["model_version"] == latest)
        rows.append(
            {
                "name": name,
                "latest_version": latest,
                "devices_on_latest": on,
                "devices": len(members),
                "percent": round(100.0 * on / len(members), 1),
            }
        )
    return rows


# ---------------------------------------------------------------- the text and HTML forms
def table_sections(view: FleetView) -> list[tuple[str, list[str], list[list]]]:
    """``(title, headers, rows)`` for each section: the text table and the page show these."""

    def version(v) -> str:
        return "-" if v is None else str(v)

    return [
        (
            "Rollout of the latest version",
            ["model", "latest version", "devices on it", "percent"],
            [
                [
                    r["name"],
                    version(r["latest_version"]),
                    f"{r['devices_on_latest']} of {r['devices']}",
                    f"{r['percent']:.1f}%",
                ]
                for r in view.rollout
            ],
        ),
        (
            "Versions by group",
            ["group", "model", "version", "devices"],
            [
                [r["group"], r["name"], version(r["model_version"]), r["devices"]]
                for r in view.versions
            ],
        ),
        (
            "Failing devices",
            ["device", "model", "state", "reason", "version", "message"],
            [
                [
                    d["device_id"],
                    d["name"],
                    d["state"],
                    d["reason"] or "-",
                    version(d["model_version"]),
                    (d["message"] or "")[:80],
                ]
                for d in view.failing
            ],
        ),
        (
            f"Not seen for over {_duration(view.stale_after_s)}",
            ["device", "model", "last seen (UTC)", "silent for"],
            [[d["device_id"], d["name"], d["seen"], _duration(d["age_s"])] for d in view.stale],
        ),
        (
            "Devices",
            [
                "device",
                "group",
                "model",
                "version",
                "state",
                "arch",
                "runtime",
                "free disk",
                "seen (UTC)",
            ],
            [
                [
                    d["device_id"],
                    d["group"],
                    d["name"],
                    version(d["model_version"]),
                    d["state"],
                    d["arch"] or "-",
                    f"{d['runtime'] or '-'} {d['runtime_version'] or ''}".strip(),
                    _size(d["free_disk_bytes"]),
                    d["seen"],
                ]
                for d in view.devices
            ],
        ),
    ]


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _size(n) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def fleet_html(view: FleetView) -> str:
    """A self-contained page (``tfedge.render``: inline CSS, no script, no network)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(view.now))
    parts = [
        f'<p class="rollout" data-model="{escape(r["name"])}">{escape(r["name"])} version '
        f"{r['latest_version']}: {r['devices_on_latest']} of {r['devices']} "
        f'<span class="bar"><span style="width:{r["percent"]:.1f}%"></span></span></p>'
        for r in view.rollout
    ]
    for title, headers, rows in table_sections(view):
        parts.append(section(title, table(headers, rows) if rows else paragraph("none")))
    summary = (
        f"{view.db} at {when}: {len(view.failing)} failing, "
        f"{len(view.stale)} not seen for over {_duration(view.stale_after_s)}."
    )
    return page(f"Fleet: {len(view.devices)} device(s)", parts, summary)
