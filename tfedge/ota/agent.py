"""Compatibility: ``python -m tfedge.ota.agent`` still runs the device agent.

The agent lives in the device package, :mod:`tfedge_device.agent`: on a device, install
``./device`` and run ``tfedge-agent`` (or ``python -m tfedge_device.agent``) with the same
options; import it from there too. This module only keeps old commands and systemd units
working.
"""

from __future__ import annotations

import sys

from tfedge_device.agent import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
