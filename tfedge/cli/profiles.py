"""``tfedge profiles list|show``: the device profiles tfedge knows."""

from __future__ import annotations

import json

import click


@click.group("profiles")
def profiles_cmd() -> None:
    """Device profiles: target boards, their CPU and budgets.

    \b
    Example:
        tfedge profiles list
        tfedge profiles show rpi4
    """


@profiles_cmd.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(as_json: bool) -> None:
    """List the shipped device profiles."""
    from tfedge.targets.profiles import list_profiles

    profiles = list_profiles()
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in profiles], indent=2))
        return
    click.echo(
        f"{'NAME':16} {'ARCH':8} {'CPU':11} {'CORES':>5} {'RAM MB':>7} {'INT8':5} "
        f"{'MAX MODEL':>11} {'MAX RAM':>8} {'TARGET':>8}  DESCRIPTION"
    )
    for p in profiles:
        click.echo(_row(p))


def _row(p) -> str:
    b = p.budgets
    full_integer = "yes" if p.requires_full_integer else "no"
    max_bytes = _fmt(b.max_model_bytes, ",") + (" B" if b.max_model_bytes else "")
    max_ram = _fmt(b.max_ram_mb, "g") + (" MB" if b.max_ram_mb else "")
    latency = _fmt(b.target_latency_ms, "g") + (" ms" if b.target_latency_ms else "")
    return (
        f"{p.name:16} {p.arch:8} {p.cpu:11} {_fmt(p.cores):>5} {_fmt(p.ram_mb):>7} "
        f"{full_integer:5} {max_bytes:>11} {max_ram:>8} {latency:>8}  {p.description}"
    )


def _fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


@profiles_cmd.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
def show_cmd(name: str, as_json: bool) -> None:
    """Show one profile, by name or by path to your own .yaml file."""
    import yaml

    from tfedge.targets.profiles import ARMV7_HINT, load_profile

    profile = load_profile(name)
    data = profile.to_dict()
    click.echo(
        json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False).rstrip()
    )
    if profile.arch == "armv7l":
        click.echo(f"Warning: {ARMV7_HINT}", err=True)
