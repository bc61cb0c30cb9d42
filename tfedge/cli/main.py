"""The ``tfedge`` command group and the one place where errors become exit codes.

Sub-commands are imported lazily by name, and no command module imports TensorFlow at
module level, so ``tfedge --help`` answers at once.

An error is one ``Error: ...`` line on stderr; when the command was given ``--json``, it is
one JSON object on stdout instead (``error``, ``hint``, ``kind``, ``exit_code``; see
:func:`error_object`). The exit code is the same either way.
"""

from __future__ import annotations

import importlib
import os

import click

from tfedge.cli.options import echo_json
from tfedge.errors import TfedgeError
from tfedge.fsutil import Terminated, signals_as_interrupt

# name -> "module:attribute" (modules under tfedge.cli)
COMMANDS = {
    "analyze": "analyze:analyze_cmd",
    "convert": "convert:convert_cmd",
    "inspect": "inspect:inspect_cmd",
    "evaluate": "evaluate:evaluate_cmd",
    "demo": "demo:demo_cmd",
    "profiles": "profiles:profiles_cmd",
    "bench": "bench:bench_cmd",
    "emulator": "emulator:emulator_cmd",
    "optimize": "optimize:optimize_cmd",
    "recipes": "recipes:recipes_cmd",
    "search": "search:search_cmd",
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
        return mark_json_options(getattr(module, attr))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[ARGS_META] = list(args)  # the words, for a usage error under --json
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            # SIGTERM, SIGHUP, SIGQUIT clean up like Ctrl-C: temporary files and folders go.
            with signals_as_interrupt():
                return super().invoke(ctx)
        except TfedgeError as err:
            if ctx.params.get("debug"):
                raise
            fail(ctx, err.exit_code, type(err).__name__, err.message, err.hint, f"Error: {err}")
        except click.UsageError as err:
            if _json_args(ctx.meta.get(ARGS_META, [])) and _has_json_option(err.ctx):
                ctx.meta[JSON_META] = True  # the words were not parsed, so --json was not seen
            if not ctx.meta.get(JSON_META):
                raise  # click prints its usage text
            hint = f"see `{err.ctx.command_path} --help`" if err.ctx else ""
            fail(ctx, err.exit_code, "UsageError", err.format_message(), hint, "")
        except Terminated as stop:
            what = f"{stop}; nothing half-written was kept"  # e.g. SIGTERM
            fail(ctx, 128 + stop.signum, "Terminated", what, "", f"Aborted: {what}.")
        except KeyboardInterrupt:
            what = "interrupted; nothing half-written was kept"
            fail(ctx, 130, "Interrupted", what, "", f"Aborted: {what}.")


def fail(ctx: click.Context, code: int, kind: str, message: str, hint: str, line: str) -> None:
    """Report an error and exit with ``code``: ``line`` on stderr, or under ``--json`` one object.

    The object (see :func:`error_object`) goes to stdout, where the command's result would
    have gone: under ``--json`` stdout always holds exactly one JSON document, and stderr is
    left to warnings and progress lines.
    """
    if ctx.meta.get(JSON_META):
        echo_json(error_object(message, hint, kind, code))  # as a command's --json result
    else:
        click.echo(line, err=True)
    ctx.exit(code)


def error_object(message: str, hint: str, kind: str, exit_code: int) -> dict:
    """The ``--json`` form of an error.

    ``kind`` is the class of the error in ``tfedge.errors`` (e.g. ``RecipeError``; click's own
    usage errors are ``UsageError`` too), or ``Interrupted`` / ``Terminated`` for a signal.
    """
    return {"error": message, "hint": hint, "kind": kind, "exit_code": exit_code}


# ---- which command runs under --json ---------------------------------------------------------

JSON_META = "tfedge_json"
ARGS_META = "tfedge_args"


def mark_json_options(command: click.Command) -> click.Command:
    """Make every ``--json`` option of ``command`` (and its sub-commands) note itself.

    When the option is given, its callback sets ``ctx.meta["tfedge_json"]`` (``meta`` is shared
    by all contexts of one invocation), so errors are printed as JSON wherever they are raised.
    """
    for param in command.params:
        if "--json" in getattr(param, "opts", ()) and not getattr(param, "_tfedge_marked", False):
            param.callback = _noting_json(param.callback)
            param._tfedge_marked = True  # type: ignore[attr-defined]
    for sub in getattr(command, "commands", {}).values():
        mark_json_options(sub)
    return command


def _noting_json(callback):
    def note(ctx: click.Context, param: click.Parameter, value):
        if value:
            ctx.meta[JSON_META] = True
        return callback(ctx, param, value) if callback else value

    return note


def _json_args(args: list[str]) -> bool:
    """``--json`` is among the command-line words (before any ``--``)."""
    words = args[: args.index("--")] if "--" in args else args
    return "--json" in words


def _has_json_option(ctx: click.Context | None) -> bool:
    if ctx is None or ctx.command is None:
        return False
    return any("--json" in getattr(p, "opts", ()) for p in ctx.command.params)


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
