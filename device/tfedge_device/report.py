"""Report the agent's status to a fleet collector (``tfedge ota collector``), best effort.

After each poll an agent configured with ``--report-url`` POSTs one JSON object: what
``status.json`` says (model, version, sha256, state, reason) plus facts about the device
(arch, TFLite runtime and its version, free disk of the model directory, uptime, agent
version), with ``Authorization: Bearer TOKEN`` (the device's own token). Standard library
only (urllib).

Reporting never changes what the device installs and never fails or delays an update: it
runs after the poll's result is known, in a thread the agent waits for at most
``timeout`` seconds, and every problem (collector down, slow, refusing) is one log line.

Example:
    >>> payload = build_report({"state": "Success", "serving": "ab" * 32,
    ...     "model_version": 2, "reason": None, "message": "installed"},
    ...     device_id="pi-07", name="kws", group=None, model_dir=Path("."), arch="aarch64")
    >>> payload["device_id"], payload["state"], payload["schema"]
    ('pi-07', 'Success', 1)
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tfedge_device import __version__

SCHEMA = 1
TIMEOUT = 5.0  # seconds: the longest a report may hold the agent after a poll
REQUIRED = ("schema", "device_id", "name", "state")
RUNTIME_PACKAGES = ("ai-edge-litert", "tflite-runtime")


class ReportError(Exception):
    """A report was not accepted (network error, timeout or an HTTP error status)."""


def build_report(
    status: dict,
    *,
    device_id: str,
    name: str,
    group: str | None,
    model_dir: Path,
    arch: str,
) -> dict:
    """The JSON object sent to the collector: ``status`` (a poll's result) plus device facts."""
    runtime, runtime_version = runtime_info()
    return {
        "schema": SCHEMA,
        "device_id": device_id,
        "name": name,
        "group": group,
        "state": status.get("state"),
        "reason": status.get("reason"),
        "message": str(status.get("message") or "")[:500],
        "model_version": status.get("model_version"),
        "sha256": status.get("serving"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arch": arch,
        "runtime": runtime,
        "runtime_version": runtime_version,
        "free_disk_bytes": free_disk(model_dir),
        "uptime_s": uptime(),
        "agent_version": __version__,
    }


def runtime_info() -> tuple[str | None, str | None]:
    """The installed TFLite runtime's package name and version, read from package metadata
    (nothing is imported); ``(None, None)`` without one."""
    from importlib.metadata import PackageNotFoundError, version

    for package in RUNTIME_PACKAGES:
        try:
            return package, version(package)
        except PackageNotFoundError:
            continue
    return None, None


def free_disk(folder: Path) -> int | None:
    """Bytes free for this user on ``folder``'s file system; None if it cannot be read."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def uptime() -> float | None:
    """Seconds since the system booted (Linux ``/proc/uptime``); None elsewhere."""
    try:
        return round(float(Path("/proc/uptime").read_text().split()[0]), 1)
    except (OSError, ValueError, IndexError):
        return None


def send_report(url: str, token: str, payload: dict, timeout: float = TIMEOUT) -> int:
    """POST ``payload`` to ``url``; the HTTP status (2xx), or ReportError saying why not."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
            "User-Agent": f"tfedge-agent/{__version__}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read(4096)
            return response.status
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip()
        raise ReportError(f"collector answered {exc.code} {exc.reason}: {detail}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        cause = getattr(exc, "reason", exc)
        raise ReportError(f"collector unreachable ({type(exc).__name__}: {cause})") from exc


def report_status(cfg, status: dict, log, timeout: float = TIMEOUT) -> bool:
    """Send one poll's ``status`` for the agent configured by ``cfg``; never raises, and
    returns within about ``timeout`` seconds whatever the collector does. True if accepted."""
    if not getattr(cfg, "report_url", None):
        return False
    outcome: dict = {}

    def send() -> None:
        try:
            payload = build_report(
                status,
                device_id=cfg.device_id or _hostname(),
                name=cfg.name,
                group=cfg.group,
                model_dir=Path(cfg.model_dir),
                arch=cfg.arch,
            )
            outcome["status"] = send_report(
                cfg.report_url, cfg.report_token or "", payload, timeout
            )
        except ReportError as exc:
            outcome["error"] = str(exc)
        except Exception as exc:  # a report must never take the agent down
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=send, name="tfedge-report", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        log(f"status report to {cfg.report_url} abandoned after {timeout:.0f} s")
        return False
    if "error" in outcome:
        log(f"status report to {cfg.report_url} not sent: {outcome['error']}")
        return False
    return True


def _hostname() -> str:
    return os.uname().nodename
