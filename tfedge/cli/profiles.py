"""``tfedge profiles list|show|schema``: the device profiles tfedge knows, and their format."""

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
        tfedge profiles schema > profile.schema.json
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
    click.echo(format_table(COLUMNS, [_row(p) for p in profiles]))


# (header, right-aligned?) of `profiles list`; the last column is not padded.
COLUMNS = (
    ("NAME", False),
    ("ARCH", False),
    ("CPU", False),
    ("CORES", True),
    ("RAM MB", True),
    ("INT8", False),
    ("MAX MODEL", True),
    ("MAX RAM", True),
    ("TARGET", True),
    ("DESCRIPTION", False),
)


def format_table(columns, rows: list[list[str]]) -> str:
    """Columns as wide as their widest cell, two spaces apart; numbers aligned right."""
    table = [[header for header, _ in columns], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = []
    for row in table:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, (_, right) in zip(row, widths, columns)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _row(p) -> list[str]:
    b = p.budgets
    return [
        p.name,
        p.arch,
        p.cpu,
        _fmt(p.cores),
        _fmt(p.ram_mb),
        "yes" if p.requires_full_integer else "no",
        _fmt(b.max_model_bytes, ",", " B"),
        _fmt(b.max_ram_mb, "g", " MB"),
        _fmt(b.target_latency_ms, "g", " ms"),
        p.description,
    ]


def _fmt(value, spec: str = "", unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


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


@profiles_cmd.command("schema")
@click.option(
    "--inventory",
    is_flag=True,
    help="The schema of a `tfedge bench --inventory` file instead of a profile's.",
)
def schema_cmd(inventory: bool) -> None:
    """Print the JSON Schema of a profile file (or an inventory file), for editors.

    \b
    Example:
        tfedge profiles schema > profile.schema.json
        tfedge profiles schema --inventory > inventory.schema.json
    \b
    Then, as the first line of a profile (YAML language server, e.g. VS Code's YAML):
        # yaml-language-server: $schema=profile.schema.json
    """
    if inventory:
        from tfedge.targets.bench import inventory_schema

        schema = inventory_schema()
    else:
        from tfedge.targets.profiles import profile_schema

        schema = profile_schema()
    click.echo(json.dumps(schema, indent=2))
