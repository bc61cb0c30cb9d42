"""The fleet view: agents' reports (tfedge_device.report) sent to a real collector on
loopback, stored in SQLite, summarised by ``tfedge ota fleet``; hostile reports refused.

The collector is ``tfedge.ota.collector.make_collector`` serving in a thread; reports are the
real payloads ``tfedge_device.report.build_report`` makes, POSTed by ``send_report`` (urllib)
from threads, as 20 agents would. One test runs a real agent install whose collector is down.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests import ota_helpers as oh
from tests.conftest import assert_one_error_line
from tfedge.ota import collector as col
from tfedge.ota import fleet
from tfedge_device import report
from tfedge_device.config import AgentConfig, ConfigError, parse_args, validate

N_AGENTS = 20
BURST = 3


def _token(device_id: str) -> str:
    return f"token-{device_id}-0123456789"


def _tokens_file(folder: Path) -> Path:
    lines = [f"dev-{i:02d} {_token(f'dev-{i:02d}')}" for i in range(N_AGENTS)]
    lines[0] += " canary"  # the token file's group wins over the report's
    lines.append(f"flood {_token('flood')}")
    path = folder / "tokens.txt"
    path.write_text("# device token [group]\n" + "\n".join(lines) + "\n")
    return path


class Collector:
    """A collector on a loopback port, serving in a thread (no refill: a fixed burst)."""

    def __init__(self, folder: Path, db: str | None = None) -> None:
        self.db = db or folder / "state" / "fleet.sqlite"
        self.rejected: list[str] = []
        self.server = col.make_collector(
            _tokens_file(folder),
            self.db,
            port=0,
            limiter=col.RateLimiter(burst=BURST, per_second=0.0),
            log=self.rejected.append,
        )
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = self.server.url

    def send(self, device_id: str, token: str | None = None, **status) -> int:
        payload = _payload(device_id, **status)
        return report.send_report(self.url, token or _token(device_id), payload, timeout=10)

    def raw(self, body: bytes, headers: dict, send_body: bool = True) -> tuple[int, dict]:
        host, port = self.server.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=8)
        try:
            conn.putrequest("POST", "/report")
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders(body if send_body else None)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.server.store.close()


def _payload(device_id: str, **status) -> dict:
    status = {
        "state": "Success",
        "serving": "ab" * 32,
        "model_version": 2,
        "reason": None,
        "message": "up to date",
        **status,
    }
    return report.build_report(
        status,
        device_id=device_id,
        name="kws",
        group=status.pop("group", None),
        model_dir=Path("."),
        arch="aarch64",
    )


@pytest.fixture
def collector(tmp_path):
    c = Collector(tmp_path)
    yield c
    c.stop()


def _auth(device_id: str) -> dict:
    return {"Authorization": f"Bearer {_token(device_id)}", "Content-Type": "application/json"}


# ---------------------------------------------------------------- the collector
def test_twenty_agents_reporting_concurrently_are_all_stored(collector):
    statuses: dict[str, int] = {}

    def agent(i: int) -> None:
        statuses[f"dev-{i:02d}"] = collector.send(f"dev-{i:02d}", model_version=1 + i % 2)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(N_AGENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses == {f"dev-{i:02d}": 200 for i in range(N_AGENTS)}
    assert collector.server.store.count() == N_AGENTS
    view = fleet.fleet_view(collector.db)
    assert sorted(d["device_id"] for d in view.devices) == [f"dev-{i:02d}" for i in range(20)]
    first = next(d for d in view.devices if d["device_id"] == "dev-00")
    assert first["group"] == "canary" and first["arch"] == "aarch64"
    assert first["agent_version"] == report.__version__ and first["sha256"] == "ab" * 32
    assert view.rollout == [
        {
            "name": "kws",
            "latest_version": 2,
            "devices_on_latest": 10,
            "devices": 20,
            "percent": 50.0,
        }
    ]
    assert collector.rejected == []


def test_wrong_or_missing_token_is_refused(collector):
    with pytest.raises(report.ReportError, match="401"):
        collector.send("dev-01", token=_token("dev-02") + "x")
    status, answer = collector.raw(json.dumps(_payload("dev-01")).encode(), {})
    assert status == 401 and "token" in answer["error"]
    # another device's token for this device's report: authenticated, but not this device
    with pytest.raises(report.ReportError, match="403"):
        collector.send("dev-01", token=_token("dev-02"))
    assert collector.server.store.count() == 0


def test_oversized_body_is_refused_without_reading_it(collector):
    status, answer = collector.raw(
        b"", dict(_auth("dev-01"), **{"Content-Length": str(50_000_000)}), send_body=False
    )
    assert status == 413 and "larger than 65536" in answer["error"]
    big = _payload("dev-01", message="x" * 400)
    big["padding"] = "y" * (col.MAX_BODY + 1)
    with pytest.raises(report.ReportError, match="413"):
        report.send_report(collector.url, _token("dev-01"), big, timeout=10)
    assert collector.server.store.count() == 0


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b'{"schema": 1, "device_id": "dev-01", ', "malformed JSON"),
        (b"\xff\xfe not json", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"schema": 1, "device_id": "dev-01", "name": "kws"}', "no 'state'"),
        (
            b'{"schema": 1, "device_id": "dev-01", "name": "kws", "state": "Success", '
            b'"model_version": "2"}',
            "'model_version' has the wrong type",
        ),
        (b'{"schema": 1, "device_id": "dev-01", "name": "kws", "state": "Happy"}', "state"),
    ],
)
def test_malformed_report_is_refused(collector, body, fragment):
    headers = dict(_auth("dev-01"), **{"Content-Length": str(len(body))})
    status, answer = collector.raw(body, headers)
    assert status == 400 and fragment in answer["error"], answer
    assert collector.server.store.count() == 0


def test_flood_from_one_device_is_rate_limited_while_others_get_through(collector):
    codes = []
    for _ in range(BURST + 7):
        try:
            codes.append(collector.send("flood"))
        except report.ReportError as exc:
            codes.append(int(str(exc).split()[2]))
    assert codes == [200] * BURST + [429] * 7
    assert collector.send("dev-05") == 200
    status, _ = collector.raw(b"{}", dict(_auth("flood"), **{"Content-Length": "2"}))
    assert status == 429
    assert collector.server.store.count() == BURST + 1


def test_rate_limiter_refills_per_device():
    clock = [0.0]
    limiter = col.RateLimiter(burst=2, per_second=0.5, clock=lambda: clock[0])
    assert [limiter.allow("a") for _ in range(3)] == [0.0, 0.0, 2.0]
    assert limiter.allow("b") == 0.0
    clock[0] = 2.0
    assert limiter.allow("a") == 0.0 and limiter.allow("a") > 0


def test_slow_collector_never_holds_the_agent(tmp_path):
    """A collector that accepts and never answers: the report is abandoned, not raised."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    lines: list[str] = []
    cfg = AgentConfig(
        "http://127.0.0.1:1",
        tmp_path,
        "kws",
        tmp_path / "root.json",
        report_url=f"http://127.0.0.1:{listener.getsockname()[1]}/report",
        report_token=_token("dev-01"),
        device_id="dev-01",
    )
    try:
        assert report.report_status(cfg, {"state": "Success"}, lines.append, timeout=0.5) is False
    finally:
        listener.close()
    assert len(lines) == 1 and "not sent" in lines[0] and "timed out" in lines[0], lines


def _terminal_sigint() -> None:
    """SIGINT as in a terminal. A shell's background job (CI runs the suite as one) starts
    with SIGINT ignored, its children inherit that, and Python then leaves it ignored: the
    collector, like any program started under ``nohup``, would never see the Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_collector_command_prints_its_url_and_stores_reports(tmp_path):
    """``tfedge ota collector --port 0`` as a process: the bound URL first, then serving;
    Ctrl-C (SIGINT) stops it cleanly."""
    import signal
    import subprocess
    import sys

    argv = [sys.executable, "-m", "tfedge", "ota", "collector", "--port", "0"]
    argv += ["--tokens", str(_tokens_file(tmp_path)), "-o", str(tmp_path / "st")]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # a hang is aborted with every stack
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_terminal_sigint,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("collecting reports at http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[3]
        payload = _payload("dev-09", model_version=5)
        assert report.send_report(url, _token("dev-09"), payload, timeout=10) == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=20)  # a hang guard, not a speed check
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            out, err = proc.communicate()
            pytest.fail(f"the collector did not stop on SIGINT; its stderr: {err[-6000:]}")
    assert proc.returncode == 0, err
    (device,) = fleet.fleet_view(tmp_path / "st" / "fleet.sqlite").devices
    assert (device["device_id"], device["model_version"]) == ("dev-09", 5)


# ---------------------------------------------------------------- ota fleet
def test_fleet_json_table_and_html_reflect_the_reports(collector, run_cli, tmp_path):
    assert collector.send("dev-00", model_version=3) == 200  # canary (token file)
    assert collector.send("dev-01", model_version=2, group="beta") == 200  # the report's group
    assert collector.send("dev-02", model_version=2) == 200
    assert (
        collector.send(
            "dev-03",
            state="RolledBack",
            reason="health",
            model_version=2,
            message="version 3 rolled back: health check failed",
        )
        == 200
    )
    silent = _payload("dev-04", model_version=1)
    old = col.check_report(silent, col.Device("dev-04", _token("dev-04")), time.time() - 7200)
    collector.server.store.add(old)  # a report the collector received two hours ago

    result = run_cli("ota", "fleet", "--db", collector.db, "--json", "--stale", "1h")
    view = json.loads(result.stdout)
    assert {(v["group"], v["model_version"], v["devices"]) for v in view["versions"]} == {
        ("canary", 3, 1),
        ("beta", 2, 1),
        ("default", 2, 2),
        ("default", 1, 1),
    }
    assert [(d["device_id"], d["state"], d["reason"]) for d in view["failing"]] == [
        ("dev-03", "RolledBack", "health")
    ]
    assert [d["device_id"] for d in view["stale"]] == ["dev-04"]
    assert view["rollout"][0]["devices_on_latest"] == 1 and view["rollout"][0]["devices"] == 5

    page = tmp_path / "fleet.html"
    text = run_cli("ota", "fleet", "--db", collector.db, "--html", page).stdout
    assert "1 of 5" in text and "20.0%" in text
    failing = text.split("Failing devices")[1].split("Not seen")[0]
    assert "dev-03" in failing and "health" in failing and "dev-02" not in failing
    assert "dev-04" in text.split("Not seen for over 1.0h")[1].split("Devices")[0]
    tables = _html_tables(page.read_text())
    assert [len(t) - 1 for t in tables] == [1, 4, 1, 1, 5]  # data rows per section
    assert "<script" not in page.read_text() and "http" not in page.read_text().split("<body>")[1]


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])

    def handle_data(self, data) -> None:
        if self.tables and self.tables[-1] and data.strip():
            self.tables[-1][-1].append(data)


def _html_tables(page: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


# ---------------------------------------------------------------- bad input: one error line
def test_fleet_bad_input_is_one_error_line(run_cli, tmp_path):
    missing = tmp_path / "nothing.sqlite"
    assert_one_error_line(
        run_cli("ota", "fleet", "--db", missing, expect=1), "no fleet database", str(missing)
    )
    other = tmp_path / "notes.txt"
    other.write_text("not a database\n" * 100)
    assert_one_error_line(run_cli("ota", "fleet", "--db", other, expect=1), "not a fleet database")
    assert other.read_text() == "not a database\n" * 100
    assert_one_error_line(
        run_cli("ota", "fleet", "--db", other, "--stale", "soon", expect=2), "--stale"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "tokens, fragment",
    [
        ("dev-01 short\n", "line 1"),
        ("dev-01 0123456789abcdefgh\ndev-01 0123456789abcdefgX\n", "listed twice"),
        ("dev-01 0123456789abcdefgh\ndev-02 0123456789abcdefgh\n", "another device's"),
        ("../x 0123456789abcdefgh\n", "not a valid id"),
        ("# nothing\n", "lists no device"),
    ],
)
def test_collector_bad_token_file_is_one_error_line(run_cli, tmp_path, tokens, fragment):
    path = tmp_path / "tokens.txt"
    path.write_text(tokens)
    result = run_cli("ota", "collector", "--tokens", path, "-o", tmp_path / "st", expect=1)
    assert_one_error_line(result, fragment)
    assert not (tmp_path / "st").exists()


def test_collector_port_in_use_and_bad_db_are_one_error_line(run_cli, tmp_path):
    tokens = _tokens_file(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli(
            "ota", "collector", "--tokens", tokens, "-o", tmp_path / "st", "--port", port, expect=1
        )
    assert_one_error_line(result, "address already in use", f"127.0.0.1:{port}")
    result = run_cli("ota", "collector", "--tokens", tokens, "--db", "mysql://db/x", expect=2)
    assert_one_error_line(result, "unknown database URL")
    dead = f"postgresql://fleet:secret@127.0.0.1:{port}/fleet"  # nobody listens there now
    result = run_cli("ota", "collector", "--tokens", tokens, "--db", dead, "--port", 0, expect=1)
    assert_one_error_line(result, "cannot open the fleet database", "fleet:***@")
    assert "secret" not in result.stderr
    result = run_cli("ota", "fleet", "--db", dead, expect=1)
    assert_one_error_line(result, "cannot read the fleet database", "fleet:***@")
    result = run_cli("ota", "collector", "--tokens", tmp_path / "none.txt", expect=1)
    assert_one_error_line(result, "cannot read the token file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.txt"]


# ---------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on loopback (``tests/pg_server.py``); its database URL."""
    from tests.pg_server import postgres_server

    with postgres_server("fleet") as url:
        yield url


def test_collector_on_postgresql_stores_concurrent_reports(postgres, tmp_path, run_cli):
    c = Collector(tmp_path, db=postgres)
    try:
        threads = [
            threading.Thread(
                target=c.send, args=(f"dev-{i:02d}",), kwargs={"model_version": 1 + i % 4}
            )
            for i in range(N_AGENTS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        c.send("dev-03", state="Failure", reason="smoke_test", model_version=4)
        assert c.server.store.count() == N_AGENTS + 1
    finally:
        c.stop()
    with_password = postgres.replace("tfedge@", "tfedge:s3cret-pw@")  # trust auth ignores it
    out = run_cli("ota", "fleet", "--db", with_password, "--json").stdout
    assert "s3cret-pw" not in out
    view = json.loads(out)
    assert len(view["devices"]) == N_AGENTS and not list(tmp_path.glob("state"))
    assert view["rollout"][0] == {
        "name": "kws",
        "latest_version": 4,
        "devices_on_latest": 5,
        "devices": 20,
        "percent": 25.0,
    }
    assert [(d["device_id"], d["reason"]) for d in view["failing"]] == [("dev-03", "smoke_test")]


# ---------------------------------------------------------------- the agent's side
def test_agent_report_options_are_validated(tmp_path):
    root = tmp_path / "root.json"
    root.write_text("{}")
    token = tmp_path / "token"
    token.write_text(_token("dev-01") + "\n")
    base = ["--repo-url", "http://r", "--name", "kws", "--model-dir", str(tmp_path)]
    base += ["--root", str(root)]
    cfg, _ = parse_args(
        [*base, "--report-url", "http://c/report", "--report-token-file", str(token)]
    )
    assert validate(cfg).report_token == _token("dev-01")
    for extra, fragment in (
        (["--report-url", "http://c/report"], "go together"),
        (["--report-url", "ftp://c", "--report-token-file", str(token)], r"not an http\(s\) URL"),
        (
            ["--report-url", "http://c", "--report-token-file", str(token), "--device-id", "a b"],
            "device-id",
        ),
    ):
        with pytest.raises(ConfigError, match=fragment):
            validate(parse_args([*base, *extra])[0])
    token.write_text("short\n")
    with pytest.raises(ConfigError, match="16 to 256"):
        validate(
            parse_args([*base, "--report-url", "http://c", "--report-token-file", str(token)])[0]
        )


def test_agent_installs_with_its_collector_down_then_reports(collector, tmp_path, ota_models):
    from tfedge.fsutil import sha256_file
    from tfedge.ota import repository as repo_api

    base = oh.installed_v1(tmp_path / "fleet", ota_models)
    repo_api.publish(base / "repo", ota_models["v2"], "kws", 2)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}/report"
    server = oh.serve(base / "repo")
    lines: list[str] = []
    kw = {"report_token": _token("dev-07"), "device_id": "dev-07"}
    try:
        cfg = oh.agent_config(server.url, base / "device", base / "repo", report_url=down, **kw)
        from tfedge_device.agent import poll_once

        result = poll_once(cfg, log=lines.append)
        assert result.state == "Success" and result.model_version == 2, result
        assert any("not sent" in ln and "unreachable" in ln for ln in lines), lines
        v2 = sha256_file(ota_models["v2"])
        oh.assert_whole_model(base / "device", {v2: ota_models["v2"]})
        assert oh.status_of(base / "device")["state"] == "Success"
        # the collector is back: the next poll (up to date) reports what the device runs
        up = oh.poll(server.url, base / "device", base / "repo", report_url=collector.url, **kw)
        assert up.state == "Success"
    finally:
        server.stop()
    (device,) = fleet.fleet_view(collector.db).devices
    assert (device["device_id"], device["model_version"], device["sha256"]) == ("dev-07", 2, v2)
    assert device["state"] == "Success" and device["free_disk_bytes"] > 0
