"""`tfedge demo`."""

from __future__ import annotations

import click

from tfedge.cli.options import echo_table


@click.command("demo")
@click.option(
    "--models-dir",
    default="models",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where reference models are built and cached.",
)
@click.option(
    "--out",
    "out_dir",
    default="demo-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the demo writes its models and reports.",
)
def demo_cmd(models_dir, out_dir):
    """Run the whole toolchain on the digits reference model and print a table.

    \b
    Example:
        tfedge demo --out /tmp/demo
    """
    from tfedge.zoo.demo import run_demo

    result = run_demo(models_dir, out_dir, say=lambda s: click.secho(s, bold=True, err=True))
    echo_table(
        ["model", "accuracy", "bytes", "gzip bytes", "size ratio", "full-integer"],
        [
            [
                r.model,
                r.accuracy,
                f"{r.size_bytes:,}",
                f"{r.gzip_bytes:,}",
                "-" if r.size_ratio != r.size_ratio else f"{r.size_ratio:.3f}",
                r.full_integer,
            ]
            for r in result.rows
        ],
    )
    click.echo()
    echo_table(
        ["target", "runtime", "float32 p50 us", "int8 p50 us", "int8 speed-up"],
        [
            [
                b.target + (" (EMULATED)" if b.emulated else ""),
                b.runtime,
                f"{b.float32_p50_us:,.1f}",
                f"{b.int8_p50_us:,.1f}",
                f"{b.speedup:.2f}x",
            ]
            for b in result.bench
        ],
    )
    if result.faster:
        click.echo()
        before, after = result.macs or (0, 0)
        click.echo(f"channels pass: {before:,} -> {after:,} MACs ({after / max(before, 1):.0%})")
        echo_table(
            ["target", "int8 p50 us", "channels int8 p50 us", "speed-up"],
            [
                [
                    f.target + (" (EMULATED)" if f.emulated else ""),
                    f"{f.int8_p50_us:,.1f}",
                    f"{f.channels_p50_us:,.1f}",
                    f"{f.speedup:.2f}x",
                ]
                for f in result.faster
            ],
        )
        if result.channels_report:
            click.echo(f"where it paid, per channel group (local CPU): {result.channels_report}")
    if result.search:
        line = result.search
        found = (
            f"best feasible {line.best}" if line.best else f"none feasible; closest {line.closest}"
        )
        click.echo(
            f"\nsearch ({line.trials} trials, local CPU, relative budgets, {line.front} on the "
            f"front): {found} (report: {line.output_dir}/report.html)"
        )
    if result.ship:
        click.echo(
            f"\nshipped to the stand-in device {result.ship.device_dir}: {result.ship.state}, "
            f"model version {result.ship.model_version}, serving {result.ship.serving}"
        )
        if result.ship.update:
            click.echo(f"fine-tuned digits-int8 on a second device: {result.ship.update}")
        if result.ship.fleet:
            click.echo(f"fleet collector: {result.ship.fleet}")
    for note in result.notes:
        click.echo(note)
