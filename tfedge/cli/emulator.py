"""``tfedge emulator setup|status``: the emulated aarch64 Raspberry Pi (qemu-user)."""

from __future__ import annotations

import json

import click


@click.group("emulator")
def emulator_cmd() -> None:
    """The emulated ARM target used by ``tfedge bench --target qemu``.

    \b
    Example:
        tfedge emulator setup
        tfedge bench model.tflite --target qemu --profile rpi4
    """


@emulator_cmd.command("setup")
@click.option(
    "--mirror", help="Debian mirror URL (default: the one this machine's apt sources name)."
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "ai-edge-litert", "tflite-runtime"]),
    default="auto",
    show_default=True,
    help="aarch64 TFLite runtime to install (auto: the first that works under qemu).",
)
@click.option("--force", is_flag=True, help="Rebuild even if a cached root exists.")
def setup_cmd(mirror: str | None, runtime: str, force: bool) -> None:
    """Build the aarch64 Debian bookworm root once (cached; needs root or user namespaces)."""
    from tfedge.targets import emulator

    env = emulator.setup(
        mirror=mirror,
        runtime=runtime,
        force=force,
        log=lambda msg: click.echo(f"==> {msg}", err=True),
    )
    click.echo(
        f"emulator ready: {env.root.parent} "
        f"({env.runtime} {env.runtime_version}, numpy {env.numpy_version})"
    )


@emulator_cmd.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_cmd(as_json: bool) -> None:
    """Say whether the emulated root is built, and with which runtime."""
    from tfedge.targets import emulator

    env = emulator.status()
    if as_json:
        click.echo(json.dumps({k: str(v) for k, v in vars(env).items()} if env else None))
    elif env is None:
        click.echo(
            f"not set up (would be cached in {emulator.env_dir()}); run `tfedge emulator setup`"
        )
    else:
        click.echo(
            f"ready: {env.root.parent}\nruntime: {env.runtime} {env.runtime_version}, "
            f"numpy {env.numpy_version}\nbuilt: {env.built_at} from {env.mirror}"
        )
