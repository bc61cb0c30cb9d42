"""``tfedge bench``: latency, memory and accuracy of a .tflite on local, qemu or ssh targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tfedge.errors import UsageError


@click.command("bench")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--target",
    "-t",
    default="local",
    show_default=True,
    help="local, qemu, or ssh://user@host[:port][/workdir][?python=PATH&key=PATH]",
)
@click.option(
    "--profile", "-p", help="Device profile name or .yaml path: checks the model and its budgets."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Interpreter threads (default: the profile's; on local and qemu at most this host's "
    "cores).",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Minimum measured runs.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Minimum warm-up runs.",
)
@click.option(
    "--min-secs",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Minimum measured time in seconds.",
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    help=".npz with x (and y) or .npy inputs: real inputs, and accuracy with labels.",
)
@click.option(
    "--compare",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Another .tflite (e.g. the float32 one) to run the same way; reports the speed-up.",
)
@click.option(
    "--inventory",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="YAML list of devices to benchmark concurrently (replaces --target).",
)
@click.option(
    "--no-xnnpack", is_flag=True, help="Run the builtin kernels without the XNNPACK delegate."
)
@click.option("--cpus", help="Pin the benchmark to these CPUs, like taskset -c (e.g. 2,3).")
@click.option("--remote-python", help="Python on the SSH device (default python3).")
@click.option("--key", help="SSH private key file (default: ssh-agent and ~/.ssh keys).")
@click.option("--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=600,
    show_default=True,
    help="Seconds before a run is abandoned.",
)
@click.option(
    "--op-profile",
    type=click.Choice(["layers", "ops"]),
    is_flag=False,
    flag_value="layers",
    default=None,
    help="Where the time goes: per Keras layer (default) or per op, measured by timing "
    "prefixes of the graph; --runs and --min-secs are split over the rounds.",
)
@click.option(
    "--keras",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="--op-profile: the Keras model the .tflite came from (.keras, .h5), to name ops "
    "after its layers exactly (its config is read as data, nothing is loaded).",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    help="--op-profile: rounds over the prefixes; the noise is their spread [default: 5].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench_cmd(
    model: Path,
    target: str,
    profile: str | None,
    threads: int | None,
    runs: int,
    warmup: int,
    min_secs: float,
    data: Path | None,
    compare: Path | None,
    inventory: Path | None,
    no_xnnpack: bool,
    cpus: str | None,
    remote_python: str | None,
    key: str | None,
    known_hosts: str | None,
    timeout: float,
    op_profile: str | None,
    keras: Path | None,
    rounds: int | None,
    as_json: bool,
) -> None:
    """Benchmark MODEL like TFLite's benchmark_model, on the local CPU, emulated ARM, or a board.

    \b
    Example:
        tfedge bench model_int8.tflite --compare model_float.tflite
        tfedge bench model_int8.tflite --target qemu --profile rpi4
        tfedge bench model_int8.tflite --target ssh://pi@raspberrypi.local --profile rpi4 \\
            --data eval.npz
        tfedge bench model_int8.tflite --op-profile          # time per Keras layer
        tfedge bench model_int8.tflite --op-profile ops --target qemu
    """
    from tfedge.targets.bench import bench, enforce_budgets

    options: dict[str, Any] = dict(
        profile=profile,
        threads=threads,
        runs=runs,
        warmup=warmup,
        min_secs=min_secs,
        data=data,
        compare=compare,
        xnnpack=not no_xnnpack,
        cpus=cpus,
        timeout=timeout,
        python=remote_python,
        key=key,
        known_hosts=known_hosts,
    )
    if op_profile is None and (keras is not None or rounds is not None):
        raise UsageError(
            f"{'--keras' if keras is not None else '--rounds'} only applies with --op-profile",
            "add --op-profile",
        )
    if op_profile is not None:
        _check_op_profile(inventory, compare)
    if inventory is not None:
        return _inventory(model, inventory, target, options, as_json)
    ssh_options = {k: options.pop(k) for k in ("python", "key", "known_hosts")}
    if not target.startswith("ssh://") and any(ssh_options.values()):
        raise UsageError(
            "--remote-python, --key and --known-hosts only apply to ssh:// targets",
            "drop them, or use --target ssh://user@host",
        )
    ssh_given = {k: v for k, v in ssh_options.items() if v}
    if op_profile is not None:
        per_op = op_profile == "ops"
        return _op_profile(model, target, per_op, rounds, keras, options, ssh_given, as_json)
    result = bench(model, target=target, **options, **ssh_given)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_result(result))
    enforce_budgets(result)


def _check_op_profile(inventory: Path | None, compare: Path | None) -> None:
    if inventory is not None or compare is not None:
        raise UsageError(
            "--op-profile profiles one model on one target: it cannot be combined with "
            f"{'--inventory' if inventory is not None else '--compare'}",
            "run --op-profile once per model and per target",
        )


def _op_profile(model, target, per_op, rounds, keras, options, ssh_given, as_json) -> None:
    from tfedge.analyze.op_profile import DEFAULT_ROUNDS, format_profile
    from tfedge.analyze.op_profile import op_profile as profile_ops
    from tfedge.convert.keras_layers import keras_layers

    options = {k: v for k, v in options.items() if k != "compare"}
    rounds = rounds or DEFAULT_ROUNDS
    # A normal bench's budget for each model, split over the rounds.
    options["runs"] = max(1, options["runs"] // rounds)
    options["min_secs"] = options["min_secs"] / rounds
    layers = keras_layers(keras) if keras is not None else None
    if keras is not None and layers is None:
        from tfedge.errors import ModelLoadError

        raise ModelLoadError(
            f"{keras} has no Keras layer names tfedge can read",
            "pass the .keras or .h5 file the .tflite was converted from, or drop --keras",
        )
    result = profile_ops(
        model, target, per_op=per_op, rounds=rounds, layers=layers, **options, **ssh_given
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    r = result.bench
    click.echo("\n".join(format_result(r).splitlines()[:3]))
    click.echo(format_profile(result))
    if r.threads_note:
        click.echo(f"note        threads: {r.threads} ({r.threads_note})")
    if r.emulated:
        click.echo(f"note        {r.note}")


def _inventory(model, inventory, target, options, as_json) -> None:
    from tfedge.targets.bench import bench_inventory

    if target != "local":
        raise UsageError(
            "--inventory and --target cannot be combined",
            "put each device's target in the inventory",
        )
    options = {k: v for k, v in options.items() if v is not None}
    rows = bench_inventory(model, inventory, **options)
    click.echo(json.dumps([r.to_dict() for r in rows], indent=2) if as_json else format_rows(rows))
    failed = [r for r in rows if r.error]
    if failed:
        from tfedge.errors import BenchError

        raise BenchError(
            f"{len(failed)} of {len(rows)} device(s) failed: {', '.join(r.name for r in failed)}",
            "see the error column above",
        )


# ---------------------------------------------------------------- formatting
def format_result(r) -> str:
    """A human summary of a BenchResult, like benchmark_model's closing lines."""
    lat = r.latency_us
    lines = [
        f"target      {r.target} ({r.arch}{', EMULATED' if r.emulated else ''})",
        f"runtime     {r.runtime['name']} {r.runtime['version']}, XNNPACK "
        f"{'on' if r.runtime.get('xnnpack', True) else 'off'}, {r.threads} thread(s)",
        f"model       {Path(r.model).name}, {r.model_bytes:,} B",
        f"init        {r.init_ms:.2f} ms, first inference {r.first_us:,.0f} us",
        f"latency us  count={lat.count} min={lat.min:,.1f} p50={lat.p50:,.1f} p90={lat.p90:,.1f} "
        f"p99={lat.p99:,.1f} max={lat.max:,.1f} mean={lat.mean:,.1f} std={lat.std:,.1f}",
        f"peak RSS    {r.peak_rss_mb:.1f} MB",
    ]
    if r.accuracy is not None:
        lines.append(f"accuracy    {r.accuracy:.2%} on {r.samples} samples")
    lines += _device_lines(r.device)
    if r.compare is not None:
        lines.append(
            f"compare     {Path(r.compare.model).name}: p50 {r.compare.latency_us.p50:,.1f} us -> "
            f"{Path(r.model).name} is {r.speedup:.2f}x {'faster' if r.speedup >= 1 else 'as fast'}"
        )
    lines.append(_budget_line(r))
    if r.threads_note:
        lines.append(f"note        threads: {r.threads} ({r.threads_note})")
    if r.emulated:
        lines.append(f"note        {r.note}")
    return "\n".join(lines)


def _device_lines(device: dict) -> list[str]:
    keys = ("model", "governor", "cur_freq_khz", "temperature_c", "throttled")
    shown = [f"{k}={device[k]}" for k in keys if device.get(k) is not None]
    return [f"device      {' '.join(shown)}"] if shown else []


def _budget_line(r) -> str:
    if not r.budget.checked:
        return f"budgets     not checked: {r.budget.reason}"
    if r.budget.violations:
        return "budgets     OVER: " + "; ".join(r.budget.violations)
    return f"budgets     within {r.profile}'s RAM and latency budgets"


def format_rows(rows) -> str:
    """One row per device of an inventory run."""
    out = [
        f"{'DEVICE':16} {'TARGET':32} {'RUNTIME':22} "
        f"{'P50 MS':>8} {'P90 MS':>8} {'RSS MB':>7} {'ACC':>6}  STATUS"
    ]
    for row in rows:
        r = row.result
        if r is None:
            out.append(
                f"{row.name:16} {row.target:32} {'-':22} "
                f"{'-':>8} {'-':>8} {'-':>7} {'-':>6}  error: {row.error}"
            )
            continue
        acc = f"{r.accuracy:.1%}" if r.accuracy is not None else "-"
        status = "over budget" if r.budget.violations else ("emulated" if r.emulated else "ok")
        out.append(
            f"{row.name:16} {row.target:32} {r.runtime['name'] + ' ' + r.runtime['version']:22} "
            f"{r.latency_us.p50 / 1000:8.3f} {r.latency_us.p90 / 1000:8.3f} "
            f"{r.peak_rss_mb:7.1f} {acc:>6}  {status}"
        )
    return "\n".join(out)
