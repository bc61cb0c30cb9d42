"""Compatibility: ``python -m tfedge.ota.agent`` still runs the device agent.

The agent lives in the device package, :mod:`tfedge_device.agent`: on a device, install
``./device`` and run ``tfedge-agent`` (or ``python -m tfedge_device.agent``) with the same
options. This module only re-exports it for hosts and old systemd units.
"""

from __future__ import annotations

import sys

from tfedge_device.agent import (
    AgentConfig,
    AgentError,
    ConfigError,
    PollResult,
    main,
    parse_args,
    poll_once,
    run,
    run_smoke,
    validate,
)

__all__ = [
    "AgentConfig",
    "AgentError",
    "ConfigError",
    "PollResult",
    "main",
    "parse_args",
    "poll_once",
    "run",
    "run_smoke",
    "validate",
]

if __name__ == "__main__":
    sys.exit(main())
