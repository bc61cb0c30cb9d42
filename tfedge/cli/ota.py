"""Over-the-air commands: ``push``/``rollback``/``status`` (SSH), ``ota ...`` (signed repository),
``agent`` (the device daemon)."""

from __future__ import annotations

from pathlib import Path

import click

from tfedge.cli.options import echo_json, echo_table
from tfedge.errors import UsageError

_ssh_options = [
    click.option("--key", help="SSH private key file (default: ssh-agent and ~/.ssh keys)."),
    click.option("--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)."),
    click.option(
        "--remote-python", help="Python on the device for the smoke test (default python3)."
    ),
]


def ssh_options(func):
    for option in reversed(_ssh_options):
        func = option(func)
    return func


def _overrides(key, known_hosts, remote_python) -> dict:
    return {"key": key, "known_hosts": known_hosts, "python": remote_python}


# ---------------------------------------------------------------- push / rollback / status
@click.command("push")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("target")
@click.option(
    "--name",
    help="Model name; asserts the one the device's directory holds (default: that one, or the "
    "directory's name on a first push).",
)
@click.option("--no-smoke-test", is_flag=True, help="Skip running the golden input on the device.")
@click.option(
    "--allow-signature-change", is_flag=True, help="Accept a different input/output shape or dtype."
)
@click.option(
    "--keep",
    type=click.IntRange(min=2),
    default=3,
    show_default=True,
    help="Versions kept on the device.",
)
@click.option(
    "--golden",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=".npz whose x gives the smoke-test inputs (default: seeded random inputs).",
)
@click.option(
    "--compress",
    type=click.Choice(["auto", "lzma", "zstd", "none"]),
    default="auto",
    show_default=True,
    help="Send the model compressed; the device decompresses it and checks its sha256. "
    "auto: lzma unless it would save under 5%; zstd: needs zstandard here, and on the "
    "device (else lzma).",
)
@ssh_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def push_cmd(
    model,
    target,
    name,
    no_smoke_test,
    allow_signature_change,
    keep,
    golden,
    compress,
    key,
    known_hosts,
    remote_python,
    as_json,
):
    """Install MODEL on the device at TARGET (ssh://user@host[:port]/path/to/model_dir), atomically.

    \b
    Example:
        tfedge push kws_int8.tflite ssh://pi@raspberrypi.local/srv/models/kws
    """
    from tfedge.ota.push import push

    result = push(
        model,
        target,
        name=name,
        smoke_test=not no_smoke_test,
        allow_signature_change=allow_signature_change,
        keep=keep,
        golden=golden,
        compress=compress,
        **_overrides(key, known_hosts, remote_python),
    )
    if as_json:
        return echo_json(result.to_dict())
    if result.already_current:
        return click.echo(f"{target}: already active ({result.sha256[:12]}); nothing to do")
    smoke = f", smoke test passed (max diff {result.smoke['max_abs_diff']})" if result.smoke else ""
    click.echo(
        f"{target}: switched to {result.sha256[:12]} "
        f"in {result.seconds.get('total', 0):.2f} s{smoke}; "
        f"previous {(result.previous or 'none')[:12]}"
    )
    if result.uploaded:
        click.echo(
            f"sent {result.sent_bytes:,} bytes ({result.compression}) "
            f"for a {result.model_bytes:,}-byte model"
        )
    for note in result.notes:
        click.echo(f"note: {note}")


@click.command("rollback")
@click.argument("target")
@click.option("--name", help="Check the directory holds this model.")
@ssh_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def rollback_cmd(target, name, key, known_hosts, remote_python, as_json):
    """Switch the device at TARGET back to its previous model, atomically.

    \b
    Example:
        tfedge rollback ssh://pi@raspberrypi.local/srv/models/kws
    """
    from tfedge.ota.push import rollback

    result = rollback(target, name=name, **_overrides(key, known_hosts, remote_python))
    if as_json:
        return echo_json(result.to_dict())
    click.echo(
        f"{target}: rolled back to {result.sha256[:12]} (was {(result.previous or 'none')[:12]})"
    )


@click.command("status")
@click.argument("target")
@ssh_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def status_cmd(target, key, known_hosts, remote_python, as_json):
    """Show the active and previous model in the directory at TARGET.

    TARGET is ssh://user@host/path/to/model_dir on a device, or a model directory on this
    machine (as `tfedge push` or the device agent lay it out), read without SSH.

    \b
    Example:
        tfedge status ssh://pi@raspberrypi.local/srv/models/kws --json
        tfedge status /srv/models/kws
    """
    from tfedge.ota.push import device_status, local_status

    if _is_local(target):
        if key or known_hosts or remote_python:
            raise UsageError(
                f"{target} is a local directory: --key, --known-hosts and --remote-python "
                "are for an ssh:// target",
                "leave them out, or give ssh://user@host/path",
            )
        status = local_status(target)
    else:
        status = device_status(target, **_overrides(key, known_hosts, remote_python))
    if as_json:
        return echo_json(status.to_dict())
    where = status.model_dir if status.target == "local" else f"{status.target}{status.model_dir}"
    click.echo(f"{where}  model: {status.name or '-'}")
    for label, entry in (("current", status.current), ("previous", status.previous)):
        text = (
            f"{entry['sha256'][:12]}  {entry.get('time', '')}  {entry.get('source', '')}"
            if entry
            else "-"
        )
        click.echo(f"  {label:9}{text}")
    click.echo(
        f"  versions {len(status.versions)} kept"
        + (f", {len(status.leftovers)} leftover(s)" if status.leftovers else "")
    )


def _is_local(target: str) -> bool:
    """A TARGET without a URL scheme that names a directory here."""
    return "://" not in target and Path(target).is_dir()


# ---------------------------------------------------------------- the signed repository
@click.group("ota")
def ota_cmd():
    """Signed fleet updates: a python-tuf repository that device agents poll.

    \b
    Example:
        tfedge ota init repo
        tfedge ota publish repo kws_int8.tflite --name kws --version 1 --profile rpi4
        tfedge ota serve repo --port 8000
    """


def _echo_repo(result, as_json: bool) -> None:
    if as_json:
        return echo_json(result.to_dict())
    versions = ", ".join(f"{k} v{v}" for k, v in result.versions.items() if isinstance(v, int))
    line = f"{result.action}: {versions}"
    if result.target:
        line += f"; {result.target} = version {result.model_version} ({result.sha256[:12]})"
    click.echo(line)
    click.echo(
        f"timestamp expires {result.expires.get('timestamp')}, "
        f"snapshot {result.expires.get('snapshot')}"
    )
    for note in result.notes:
        click.echo(f"note: {note}")


def _password_prompt(confirm: bool = False):
    """Ask for a key password on a terminal (TFEDGE_KEY_PASSWORD wins); None without one."""
    import sys

    if not sys.stdin.isatty():
        return None

    def ask(label: str) -> str:
        return click.prompt(label.capitalize(), hide_input=True, confirmation_prompt=confirm)

    return ask


_root_key_option = click.option(
    "--root-key",
    "root_keys",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A root private key file, e.g. on a removable disk (repeatable).",
)


@ota_cmd.command("init")
@click.argument("repo", type=click.Path(file_okay=False, path_type=Path))
@_root_key_option
@click.option(
    "--root-threshold",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many of the --root-key keys must sign a new root.",
)
@click.option(
    "--encrypt-keys",
    is_flag=True,
    help="Encrypt every private key with a password (TFEDGE_KEY_PASSWORD, or asked).",
)
@click.option("--json", "as_json", is_flag=True)
def ota_init(repo, root_keys, root_threshold, encrypt_keys, as_json):
    """Create REPO with root, targets, snapshot and timestamp keys.

    The keys are kept in REPO/keys (0600) and never served. Give --root-key once per root
    key to write the root keys elsewhere (e.g. removable disks, kept offline: only
    rotate-keys needs them), with --root-threshold of them needed to sign.

    \b
    Example:
        tfedge ota init repo --root-key /media/usb1/root.pem --root-key /media/usb2/root.pem \\
            --root-key /media/usb3/root.pem --root-threshold 2 --encrypt-keys
    """
    from tfedge.ota.repository import init_repository

    result = init_repository(
        repo,
        root_keys,
        root_threshold,
        encrypt=encrypt_keys,
        password=_password_prompt(confirm=True),
    )
    _echo_repo(result, as_json)
    if not as_json:
        click.echo(f"root key(s): {', '.join(result.root_keys)}")
        if not root_keys:
            click.echo(
                "note: only rotate-keys needs the root key: keep it offline (move it to a "
                "removable disk; then rotate-keys --root-key PATH)"
            )
        click.echo(
            f"install {result.root_json} on every device (tfedge agent --root); serve {repo}/public"
        )


@ota_cmd.command("publish")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name; devices poll models/NAME.tflite.")
@click.option(
    "--version",
    "version",
    required=True,
    type=click.IntRange(min=1),
    help="Monotonic model version.",
)
@click.option(
    "--profile", "profiles", multiple=True, help="Device profile(s) it is for (repeatable)."
)
@click.option("--group", help="Publish to this device group only (staged rollout, e.g. canary).")
@click.option(
    "--golden",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=".npz whose x gives the golden inputs (default: seeded random inputs).",
)
@click.option(
    "--allow-signature-change",
    is_flag=True,
    help="Publish a new input/output signature (refused by default) and let devices accept it.",
)
@click.option(
    "--legacy-golden/--no-legacy-golden",
    default=True,
    show_default=True,
    help="Also put the golden data inside targets.json for agents before custom schema 2.",
)
@click.option(
    "--compress",
    type=click.Choice(["lzma", "zstd", "none"]),
    default="lzma",
    show_default=True,
    help="Also publish the model compressed as its own target (zstd: needs zstandard here, "
    "and lzma is published too for devices without it).",
)
@click.option(
    "--deltas",
    type=int,
    default=2,
    show_default=True,
    help="Also publish a signed delta from each of the last N published versions (0 to 5; "
    "devices holding one of them download only the changed tensors).",
)
@click.option("--json", "as_json", is_flag=True)
def ota_publish(
    repo,
    model,
    name,
    version,
    profiles,
    group,
    golden,
    allow_signature_change,
    legacy_golden,
    compress,
    deltas,
    as_json,
):
    """Add MODEL to REPO as a signed target with its model metadata.

    A MODEL whose input/output signature (shape, dtype, input quantization) differs from the
    published version of NAME is refused before anything is signed, unless
    --allow-signature-change.

    \b
    Example:
        tfedge ota publish repo kws_int8.tflite --name kws --version 4 --profile rpi4 --group canary
    """
    from tfedge.ota.repository import publish

    result = publish(
        repo,
        model,
        name,
        version,
        list(profiles),
        group,
        golden,
        allow_signature_change,
        legacy_golden=legacy_golden,
        password=_password_prompt(),
        compress=compress,
        deltas=deltas,
    )
    _echo_repo(result, as_json)


@ota_cmd.command("promote")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True)
@click.option("--group", required=True, help="The group whose version every device should get.")
@click.option("--json", "as_json", is_flag=True)
def ota_promote(repo, name, group, as_json):
    """Widen a staged rollout: give every device GROUP's version of NAME."""
    from tfedge.ota.repository import promote

    _echo_repo(promote(repo, name, group, password=_password_prompt()), as_json)


@ota_cmd.command("refresh")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--timestamp-days", type=click.FloatRange(min=0.01), default=1.0, show_default=True)
@click.option("--snapshot-days", type=click.FloatRange(min=0.01), default=7.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def ota_refresh(repo, timestamp_days, snapshot_days, as_json):
    """Re-sign timestamp and snapshot before they expire (run from cron, e.g. every 6 hours).

    Needs only the snapshot and timestamp keys (targets too, when it is within 30 days of
    expiry and its key is there).

    \b
    Example (crontab):
        0 */6 * * *  tfedge ota refresh /srv/tfedge-repo
    """
    from tfedge.ota.repository import refresh

    _echo_repo(refresh(repo, timestamp_days, snapshot_days, password=_password_prompt()), as_json)


@ota_cmd.command("rotate-keys")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--role", required=True, type=click.Choice(["root", "targets", "snapshot", "timestamp"])
)
@_root_key_option
@click.option("--json", "as_json", is_flag=True)
def ota_rotate(repo, role, root_keys, as_json):
    """Replace ROLE's key; the new root metadata is signed by the root keys (threshold).

    Every rotation needs the root keys: --root-key PATH for each (default: where `init`
    wrote them). Rotating root replaces the key in the first --root-key file and signs with
    the old and the new key.

    \b
    Example:
        tfedge ota rotate-keys repo --role targets --root-key /media/usb1/root.pem
    """
    from tfedge.ota.repository import rotate_keys

    _echo_repo(rotate_keys(repo, role, root_keys, password=_password_prompt()), as_json)


@ota_cmd.command("serve")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0 for a LAN).",
)
def ota_serve(repo, port, host):
    """Serve REPO/public over HTTP for trials.

    In production, any static server, object store or CDN serves it.
    """
    from tfedge.ota.repository import make_server

    server = make_server(repo, port, host)
    click.echo(f"serving {repo}/public at http://{host}:{server.server_address[1]} (Ctrl-C stops)")
    try:
        server.serve_forever()
    finally:
        server.server_close()


@ota_cmd.command("status")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def ota_status(repo, as_json):
    """Metadata versions, expiry dates and targets of REPO.

    \b
    Example:
        tfedge ota status repo
    """
    from tfedge.ota.repository import repo_status

    status = repo_status(repo)
    if as_json:
        return echo_json(status.to_dict())
    print_repo_status(status)


def print_repo_status(status) -> None:
    """The roles' versions and expiry dates, then the targets and their model versions."""
    versions = dict(status.versions)
    targets = versions.pop("targets_list", {})
    click.echo(f"{status.repo} (root metadata {status.root_json})")
    echo_table(
        ["role", "version", "expires"],
        [[role, version, status.expires.get(role, "-")] for role, version in versions.items()],
    )
    click.echo("")
    if not targets:
        click.echo("no targets yet (add one: tfedge ota publish REPO MODEL --name NAME)")
        return
    echo_table(
        ["target", "model version"],
        [[path, "-" if version is None else version] for path, version in targets.items()],
    )


# ---------------------------------------------------------------- the fleet view
@ota_cmd.command("collector")
@click.option(
    "--tokens",
    "tokens_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Token file: one `DEVICE_ID TOKEN [GROUP]` line per device.",
)
@click.option(
    "-o",
    "--dir",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("fleet"),
    show_default=True,
    help="State folder; the database is DIR/fleet.sqlite unless --db.",
)
@click.option(
    "--db",
    help="SQLite file for the reports (default DIR/fleet.sqlite), or a postgresql:// URL.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8700, show_default=True)
def ota_collector(tokens_file, state_dir, db, host, port):
    """Collect the agents' status reports (agents: --report-url http://HOST:PORT/report).

    Reports need the device's token, are at most 64 KiB, and each device may send ten at
    once, then one every 30 s; they are stored in SQLite (WAL mode) or PostgreSQL.

    \b
    Example:
        tfedge ota collector --tokens fleet-tokens.txt -o /var/lib/tfedge-fleet --port 8700
    """
    from tfedge.ota.collector import make_collector

    server = make_collector(
        tokens_file,
        db or state_dir / "fleet.sqlite",
        host,
        port,
        log=lambda message: click.echo(f"rejected: {message}", err=True),
    )
    try:  # a Ctrl-C right after the URL line still closes the database
        click.echo(f"collecting reports at {server.url} into {server.store.path} (Ctrl-C stops)")
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.store.close()


@ota_cmd.command("fleet")
@click.option(
    "--db", required=True, help="The collector's database: SQLite file or postgresql:// URL."
)
@click.option("--stale", default="1h", show_default=True, help="Silent longer than this: stale.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML page.",
)
def ota_fleet(db, stale, as_json, html_file):
    """What every device runs: versions by group, failing and silent devices, rollout.

    \b
    Example:
        tfedge ota fleet --db /var/lib/tfedge-fleet/fleet.sqlite --stale 2h --html fleet.html
    """
    from tfedge.fsutil import write_bytes_atomic
    from tfedge.ota.fleet import fleet_html, fleet_view, parse_duration, table_sections

    view = fleet_view(db, parse_duration(stale))
    if html_file is not None:
        write_bytes_atomic(html_file, fleet_html(view).encode())
    if as_json:
        return echo_json(view.to_dict())
    click.echo(f"{len(view.devices)} device(s) in {view.db}")
    for title, headers, rows in table_sections(view):
        click.echo(f"\n{title}")
        if rows:
            echo_table(headers, rows)
        else:
            click.echo("  none")


# ---------------------------------------------------------------- the device agent
@click.command("agent")
@click.option("--repo-url", required=True, help="Base URL serving metadata/ and targets/.")
@click.option("--model-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name (target models/NAME.tflite).")
@click.option(
    "--root",
    "root",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The trusted root.json installed with the agent.",
)
@click.option("--group", help="Device group for staged rollouts (e.g. canary).")
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=300,
    show_default=True,
    help="Seconds between polls.",
)
@click.option("--once", is_flag=True, help="Poll once and exit (0 = up to date or installed).")
@click.option(
    "--health-cmd", help="Shell command that must exit 0 after the switch (default: smoke test)."
)
@click.option("--health-timeout", type=click.FloatRange(min=1), default=60, show_default=True)
@click.option(
    "--post-switch-cmd", help="Shell command run after the switch, e.g. to reload the application."
)
@click.option("--keep", type=click.IntRange(min=2), default=3, show_default=True)
@click.option(
    "--profile", help="This device's profile name (refuses models made for other profiles)."
)
def agent_cmd(
    repo_url,
    model_dir,
    name,
    root,
    group,
    interval,
    once,
    health_cmd,
    health_timeout,
    post_switch_cmd,
    keep,
    profile,
):
    """Poll a signed repository and install newer models safely (the device daemon).

    On a device, install the device package (`pip install ./device`) and run `tfedge-agent`
    with the same options: no TensorFlow, no click.

    \b
    Example:
        tfedge agent --repo-url http://models.lan:8000 --model-dir /var/lib/tfedge/kws --name kws \\
            --root /etc/tfedge/root.json --interval 300
    """
    from tfedge.errors import OtaError, UsageError
    from tfedge_device.agent import AgentConfig, AgentError, ConfigError, run

    cfg = AgentConfig(
        repo_url,
        model_dir,
        name,
        root,
        group,
        interval,
        health_cmd,
        health_timeout,
        post_switch_cmd,
        keep,
        profile,
    )
    try:
        code = run(cfg, once)
    except AgentError as err:
        raise (UsageError if isinstance(err, ConfigError) else OtaError)(
            err.message, err.hint
        ) from err
    if code:
        raise SystemExit(code)
