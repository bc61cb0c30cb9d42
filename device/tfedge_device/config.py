"""The agent's configuration: one frozen dataclass, checked before any network or disk work.

No pydantic, no YAML: the command line (or the systemd unit's ExecStart) is the whole
configuration, and :func:`validate` checks every field with a message that says what is
wrong and how to fix it.

Example:
    >>> cfg, once = parse_args(["--repo-url", "https://models.lan", "--name", "kws",
    ...     "--model-dir", "/var/lib/tfedge/kws", "--root", "/etc/tfedge/root.json", "--once"])
    >>> validate(cfg).interval
    300.0
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

from tfedge_device import valid_name
from tfedge_device.modeldir import DEFAULT_KEEP


class AgentError(Exception):
    """Something the agent cannot work around; ``main`` prints it as one ``Error:`` line."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class ConfigError(AgentError):
    """A bad option: nothing was touched."""

    exit_code = 2


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs; validated up front by :func:`validate`."""

    repo_url: str
    model_dir: Path
    name: str
    root: Path
    group: str | None = None
    interval: float = 300.0
    health_cmd: str | None = None
    health_timeout: float = 60.0
    post_switch_cmd: str | None = None
    keep: int = DEFAULT_KEEP
    profile: str | None = None
    arch: str = field(default_factory=platform.machine)
    smoke_timeout: float = 120.0
    threads: int = 1
    report_url: str | None = None  # a fleet collector (tfedge ota collector) to POST status to
    report_token: str | None = None  # this device's token for it (Authorization: Bearer)
    device_id: str | None = None  # how the collector knows this device (default: hostname)


def validate(cfg: AgentConfig) -> AgentConfig:
    """Return ``cfg`` with its paths as Paths, or raise ConfigError naming the bad option."""
    cfg = _with_paths(cfg)
    _check_url(cfg.repo_url)
    _check_names(cfg.name, cfg.group, cfg.profile)
    _check_paths(cfg.root, cfg.model_dir)
    _check_numbers(cfg)
    _check_report(cfg)
    return cfg


def _with_paths(cfg: AgentConfig) -> AgentConfig:
    for key in ("repo_url", "name"):
        if not isinstance(getattr(cfg, key), str):
            raise ConfigError(f"--{key.replace('_', '-')} must be text, not {getattr(cfg, key)!r}")
    return replace(cfg, model_dir=Path(cfg.model_dir), root=Path(cfg.root))


def _check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise ConfigError(
            f"--repo-url {url!r} is not an http(s) URL", "e.g. https://models.example.com"
        )


def _check_names(name: str, group: str | None, profile: str | None) -> None:
    for option, value in (("--name", name), ("--group", group), ("--profile", profile)):
        if value is not None and not valid_name(value):
            raise ConfigError(
                f"bad {option} {value!r}", "use letters, digits, '.', '_', '-' (at most 64)"
            )


def _check_paths(root: Path, model_dir: Path) -> None:
    if not root.is_file():
        raise ConfigError(
            f"trusted root {root} does not exist",
            "install the repository's 1.root.json with the agent and pass --root PATH",
        )
    if model_dir.exists() and not model_dir.is_dir():
        raise ConfigError(f"--model-dir {model_dir} is not a directory", "pass a directory")


def _check_numbers(cfg: AgentConfig) -> None:
    if cfg.interval <= 0 or cfg.health_timeout <= 0 or cfg.keep < 2:
        raise ConfigError(
            "--interval and --health-timeout must be positive and --keep at least 2",
            "e.g. --interval 300 --health-timeout 60 --keep 3",
        )
    if cfg.smoke_timeout <= 0 or cfg.threads < 1:
        raise ConfigError(
            f"smoke_timeout {cfg.smoke_timeout} and threads {cfg.threads} must be positive",
            "e.g. smoke_timeout=120, threads=1",
        )


def _check_report(cfg: AgentConfig) -> None:
    """The optional fleet report: a collector URL and this device's token, both or neither."""
    if cfg.report_url is None and cfg.report_token is None:
        return
    hint = "--report-url http://collector.lan:8700/report --report-token-file /etc/tfedge/token"
    if not isinstance(cfg.report_url, str) or not isinstance(cfg.report_token, str):
        raise ConfigError("--report-url and a report token go together", hint)
    scheme, _, rest = cfg.report_url.partition("://")
    if scheme not in ("http", "https") or not rest:
        raise ConfigError(f"--report-url {cfg.report_url!r} is not an http(s) URL", hint)
    token = cfg.report_token
    printable = token.isascii() and token.isprintable() and " " not in token
    if not 16 <= len(token) <= 256 or not printable:
        raise ConfigError(
            "the report token must be 16 to 256 printable ASCII characters without spaces",
            "use the token the fleet's token file gives this device",
        )
    if cfg.device_id is not None and not valid_name(cfg.device_id):
        raise ConfigError(
            f"bad --device-id {cfg.device_id!r}", "use letters, digits, '.', '_', '-' (at most 64)"
        )


def _read_token(parser: argparse.ArgumentParser, path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"cannot read --report-token-file {path}: {exc}")
        return None


def parse_args(argv=None) -> tuple[AgentConfig, bool]:
    """The agent's command line; returns ``(config, once)`` (not yet validated)."""
    p = argparse.ArgumentParser(
        prog="tfedge-agent", description="Install signed model updates from a TUF repository."
    )
    p.add_argument("--repo-url", required=True, help="base URL serving metadata/ and targets/")
    p.add_argument(
        "--model-dir", required=True, type=Path, help="the model directory this agent manages"
    )
    p.add_argument("--name", required=True, help="model name (target models/NAME.tflite)")
    p.add_argument(
        "--root", required=True, type=Path, help="the trusted root.json installed with the agent"
    )
    p.add_argument("--group", help="device group for staged rollouts (e.g. canary)")
    p.add_argument(
        "--interval", type=float, default=300.0, help="seconds between polls (default 300)"
    )
    p.add_argument("--once", action="store_true", help="poll once and exit (0 = up to date)")
    p.add_argument(
        "--health-cmd",
        help="shell command that must exit 0 after the switch "
        "(default: the smoke test in a fresh process); $TFEDGE_MODEL is the active model",
    )
    p.add_argument(
        "--health-timeout", type=float, default=60.0, help="seconds for the health check"
    )
    p.add_argument(
        "--post-switch-cmd", help="shell command run after the switch, e.g. to reload the app"
    )
    p.add_argument(
        "--keep", type=int, default=DEFAULT_KEEP, help="versions kept on disk (default 3)"
    )
    p.add_argument("--profile", help="this device's profile name (refuses models made for others)")
    p.add_argument("--report-url", help="fleet collector to POST status to after each poll")
    p.add_argument(
        "--report-token-file", type=Path, help="file holding this device's collector token"
    )
    p.add_argument("--device-id", help="this device's id for the collector (default: hostname)")
    a = p.parse_args(argv)
    cfg = AgentConfig(
        a.repo_url,
        a.model_dir,
        a.name,
        a.root,
        a.group,
        a.interval,
        a.health_cmd,
        a.health_timeout,
        a.post_switch_cmd,
        a.keep,
        a.profile,
        report_url=a.report_url,
        report_token=_read_token(p, a.report_token_file),
        device_id=a.device_id,
    )
    return cfg, a.once
