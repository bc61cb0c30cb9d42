"""Run a command in a child and measure its own peak memory (``os.wait4``'s ``ru_maxrss``).

A child started directly from pytest would count pytest's RSS: Linux carries the peak RSS of
the process image an exec replaces (with vfork, the parent's) into the new program's
``ru_maxrss``, and pytest holds TensorFlow after the first ``tf`` test. So a small launcher
(a fresh Python, small once exec'ed) forks and execs the command and reports its rusage.
An ``RLIMIT_AS`` cap is no alternative: it breaks the TensorFlow and LiteRT imports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

_LAUNCHER = """
import json, os, sys
argv = json.loads(sys.argv[1])
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}))
"""


def run_with_peak_rss(
    argv: list, timeout: float, cwd=None, env: dict | None = None
) -> tuple[int, str, float, float]:
    """Run ``argv`` (stdout discarded): exit code, stderr, seconds, its peak RSS in MB.

    Fails the test when it runs past ``timeout`` (a hang), killing it.
    """
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, json.dumps([str(a) for a in argv])],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{' '.join(map(str, argv))} ran past {timeout} s")
    report = json.loads(out.strip().splitlines()[-1])
    return report["code"], err, time.monotonic() - start, report["maxrss_kb"] / 1024
