"""Progress bars on a terminal only: quiet under --json, in pipes and in tests."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


def progress_wanted(json_output: bool = False) -> bool:
    """Whether to draw progress bars: stderr is a terminal and output is not JSON."""
    return not json_output and sys.stderr.isatty()


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
