"""The ``tfedge`` command group and the one place where errors become exit codes.

Sub-commands are imported lazily by name, and no command module imports TensorFlow at
module level, so ``tfedge --help`` answers at once.
"""

from __future__ import annotations

import importlib
import os

import click

from tfedge.errors import TfedgeError
from tfedge.fsutil import Terminated, signals_as_interrupt

# name -> "module:attribute" (modules under tfedge.cli)
COMMANDS = {
    "convert": "convert:convert_cmd",
    "inspect": "inspect:inspect_cmd",
    "evaluate": "evaluate:evaluate_cmd",
    "demo": "demo:demo_cmd",
    "profiles": "profiles:profiles_cmd",
    "bench": "bench:bench_cmd",
    "emulator": "emulator:emulator_cmd",
    "optimize": "optimize:optimize_cmd",
    "recipes": "recipes:recipes_cmd",
    "push": "ota:push_cmd",
    "rollback": "ota:rollback_cmd",
    "status": "ota:status_cmd",
    "ota": "ota:ota_cmd",
    "agent": "ota:agent_cmd",
}


class TfedgeGroup(click.Group):
    """A click group that loads sub-commands on demand and formats TfedgeError."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[name].split(":")
        module = importlib.import_module(f"{__package__}.{module_name}")
        return getattr(module, attr)

    def invoke(self, ctx: click.Context):
        try:
            # SIGTERM, SIGHUP, SIGQUIT clean up like Ctrl-C: temporary files and folders go.
            with signals_as_interrupt():
                return super().invoke(ctx)
        except TfedgeError as err:
            if ctx.params.get("debug"):
                raise
            report_error(err)
            ctx.exit(err.exit_code)
        except Terminated as stop:
            click.echo(f"Aborted: {stop}; nothing half-written was kept.", err=True)
            ctx.exit(128 + stop.signum)
        except KeyboardInterrupt:
            click.echo("Aborted: interrupted; nothing half-written was kept.", err=True)
            ctx.exit(130)


def report_error(err: TfedgeError) -> None:
    """Print one clear line for ``err`` on stderr."""
    click.echo(f"Error: {err}", err=True)


@click.group(cls=TfedgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and TensorFlow's own log output.")
@click.version_option(package_name="tfedge")
def cli(debug: bool) -> None:
    """tfedge: compress, convert, benchmark and ship TensorFlow Lite models to edge devices.

    \b
    Example:
        tfedge convert model.keras --calib train.npz -o model.tflite
    """
    if debug:
        os.environ["TFEDGE_DEBUG"] = "1"


def main() -> None:
    cli(prog_name="tfedge")


if __name__ == "__main__":
    main()
