"""What long commands print while they run, decided in one place.

- Progress bars (per epoch, calibration) on a terminal only: ``progress_wanted``.
- One line per stage (``[3/5] prune: training 2 epochs ...``, then ``[3/5] prune: done in
  31.2 s, accuracy 93.10%, ...``) on stderr whether or not it is a terminal, so a log or a CI
  job sees the run advance: ``stage_log``. Both are off under ``--json``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


def progress_wanted(json_output: bool = False) -> bool:
    """Whether to draw progress bars: stderr is a terminal and output is not JSON."""
    return not json_output and sys.stderr.isatty()


def stage_log(json_output: bool = False) -> Callable[[str], None] | None:
    """Where a command's stage lines go: stderr (terminal or not), or nowhere under --json."""
    return None if json_output else _to_stderr


def _to_stderr(message: str) -> None:
    import click

    click.echo(message, err=True)


def progress_iter(
    items: Iterable[T], label: str, enabled: bool, file: TextIO | None = None
) -> Iterator[T]:
    """Iterate ``items``, drawing a bar on ``file`` (stderr by default) when ``enabled``."""
    if not enabled:
        yield from items
        return
    import click

    with click.progressbar(items, label=label, file=file or sys.stderr) as bar:
        yield from bar
