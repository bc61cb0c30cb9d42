"""The HTML reports (``tfedge.render``): their structure, parsed, and each page rendered in
headless Chromium (Debian's ``chromium``, installed by ``scripts/dev.sh``) to a screenshot
that is not blank."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tfedge.optimize.recipe import load_recipe
from tfedge.optimize.reports import write_reports
from tfedge.optimize.stages import Stage
from tfedge.ota.fleet import FleetView, fleet_html
from tfedge.render import bar_chart, page, section, table
from tfedge.search.plots import report_html


class _Outline(HTMLParser):
    """Headings, tables (rows of cell texts), SVGs (their titles) and external references."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.svgs: list[str] = []
        self.external: list[str] = []
        self._text: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for key in ("src", "href"):
            if attributes.get(key):
                self.external.append(str(attributes[key]))
        if tag in ("script", "link", "img", "iframe"):
            self.external.append(tag)
        if tag == "svg":
            self.svgs.append(str(attributes.get("aria-label", "")))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th", "h1", "h2"):
            self._text = []

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._text is not None:
            self._row.append("".join(self._text).strip())
            self._text = None
        elif tag in ("h1", "h2") and self._text is not None:
            self.headings.append("".join(self._text).strip())
            self._text = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None


def outline(html: str) -> _Outline:
    parser = _Outline()
    parser.feed(html)
    return parser


def _stage(name: str, quant: str, accuracy: float, size: int, metrics: dict) -> Stage:
    return Stage(
        name, accuracy, accuracy, None, 1000, 990, 0.01, 200, size, size // 2, size // 2, 1.0,
        f"stages/{name}.tflite", quant, metrics=metrics,
    )  # fmt: skip


def _optimize_page(tmp_path: Path) -> Path:
    channels = {
        "groups": [
            {"layers": ["conv1", "bn1"], "channels_before": 16, "channels_after": 8},
            {
                "layers": ["logits"],
                "channels_before": 10,
                "channels_after": 10,
                "left_whole": "'logits' is a model output",
            },
        ],  # fmt: skip
        "macs_before": 2000,
        "macs_after": 1000,
        "params_before": 900,
        "params_after": 500,
        "costs": {
            "before_stage": "int8",
            "target": "local",
            "emulated": False,
            "statistic": "cpu",
            "total_us_before": 20.0,
            "total_us_after": 9.0,
            "groups": [
                {
                    "macs_before": 1800,
                    "macs_after": 900,
                    "params_before": 700,
                    "params_after": 350,
                    "latency_us_before": 15.0,
                    "latency_us_after": 6.0,
                    "resolved": True,
                },
                {
                    "macs_before": 200,
                    "macs_after": 100,
                    "params_before": 200,
                    "params_after": 150,
                    "latency_us_before": 1.0,
                    "latency_us_after": 1.0,
                    "resolved": False,
                },
            ],
        },  # fmt: skip
        "sensitivity": [
            {
                "group": 0,
                "layers": ["conv1"],
                "channels": 16,
                "metric": "accuracy",
                "baseline": 98.0,
                "macs_share": 0.9,
                "criterion": "l1",
                "rows": [
                    {
                        "keep": 0.5,
                        "channels": 8,
                        "score": 90.0,
                        "drop": 8.0,
                        "macs": 500,
                        "macs_fraction": 0.5,
                    }
                ],
            },
        ],  # fmt: skip
    }
    bench = {"target": "local", "emulated": False, "threads": 2}
    stages = [
        _stage("float32", "none", 0.99, 156_216, {"bench": {**bench, "p50_us": 21.0}}),
        _stage("int8", "int8", 0.985, 45_088, {"bench": {**bench, "p50_us": 20.0}}),
        _stage("channels", "int8", 0.978, 15_096, {**channels, "bench": {**bench, "p50_us": 8.0}}),
    ]
    tmp_path.mkdir(exist_ok=True)
    write_reports(tmp_path, load_recipe("int8"), stages, 1.0)
    return tmp_path / "report.html"


def test_the_optimize_report_has_every_chart_and_table(tmp_path) -> None:
    found = outline(_optimize_page(tmp_path).read_text())
    assert found.headings[0] == "tfedge optimize: int8"
    assert "Channel groups of channels" in found.headings
    assert found.svgs[:3] == [
        "Size per stage",
        "Accuracy per stage (converted model)",
        "p50 latency per stage on local",
    ]
    assert len(found.svgs) == 4  # and the sensitivity plot
    stages, groups = found.tables
    assert [row[0] for row in stages[1:]] == ["float32", "int8", "channels"]
    assert stages[3][-1] == "8.0"  # the channels stage's p50 on the target
    assert groups[1][:4] == ["conv1, bn1", "16", "8", "1,800"]
    assert found.external == []  # self-contained: no script, no link, no image to fetch


def test_a_failed_optimize_report_says_where_it_stopped(tmp_path) -> None:
    failed = {"stage": "prune", "pass_index": 0, "error": "TrainingError",
              "message": "lost 10 points", "hint": "lower the sparsity"}  # fmt: skip
    stages = [_stage("float32", "none", 0.99, 1000, {}), _stage("int8", "int8", 0.98, 500, {})]
    write_reports(tmp_path, load_recipe("int8"), stages, 1.0, failed=failed)
    html = (tmp_path / "report.html").read_text()
    assert "FAILED at stage prune: TrainingError: lost 10 points" in html
    assert len(outline(html).svgs) == 2  # no latency: no --target


def test_render_escapes_what_it_is_given() -> None:
    html = page("<b>", [section("a&b", table(["<x>"], [["<script>"]]))], "1 < 2")
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;" in html
    svg = bar_chart("t<", ["<a>", "b"], [1.0, None])
    assert svg.count('class="bar"') == 1 and "&lt;a&gt;" in svg


def _search_page() -> str:
    rows = [
        {"number": n, "recipe_sha256": f"{n:064x}", "score": s, "accuracy": s, "p50_ms": ms,
         "peak_rss_mb": 50.0, "tflite_bytes": b * 4, "gzip_bytes": b, "excess": excess}
        for n, s, ms, b, excess in [
            (0, 0.97, 2.0, 9000, []), (1, 0.95, 1.0, 5000, []),
            (2, 0.99, 4.0, 20000, [0.5]),
        ]
    ]  # fmt: skip
    budgets = [{"name": "latency", "limit": 3.0, "unit": "ms", "kind": "relative",
                "how": "0.5 x int8"}]  # fmt: skip
    result = {"study": "s", "trials": rows, "budgets": budgets, "front": rows[:2],
              "best": rows[0], "failed": [], "notes": []}  # fmt: skip
    return report_html(result)


def _fleet_page() -> str:
    view = FleetView(
        db="fleet.sqlite",
        now=1_796_000_000.0,
        stale_after_s=3600.0,
        versions=[{"group": "canary", "name": "kws", "model_version": 2, "devices": 3}],
        rollout=[
            {
                "name": "kws",
                "latest_version": 2,
                "devices_on_latest": 3,
                "devices": 4,
                "percent": 75.0,
            }
        ],  # fmt: skip
    )
    return fleet_html(view)


def test_search_and_fleet_pages_are_self_contained() -> None:
    search, fleet = outline(_search_page()), outline(_fleet_page())
    assert len(search.svgs) == 2 and search.external == []
    assert [row[0] for row in search.tables[-1][1:]] == ["0", "1", "2"]  # every trial
    assert fleet.external == [] and ["canary", "kws", "2", "3"] in fleet.tables[1]


# -- in a browser ------------------------------------------------------------------------------
def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the unfiltered RGB(A) bytes of an 8-bit, non-interlaced PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    out, previous = bytearray(), bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (
                    line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)
                ) & 0xFF
        out += line
        previous = line
    return width, height, bytes(out)


def _screenshot(html_file: Path) -> tuple[int, int]:
    """Render ``html_file`` in headless Chromium: (coloured pixels, distinct colours)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed: run scripts/dev.sh test (it installs it)")
    shot = html_file.with_suffix(".png")
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", f"--user-data-dir={html_file.parent / 'chromium-profile'}",
         "--window-size=900,700", f"--screenshot={shot}", html_file.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    width, height, pixels = _png_pixels(shot)
    bpp = len(pixels) // (width * height)
    colours = {pixels[i : i + 3] for i in range(0, len(pixels), bpp * 7)}
    dark = sum(1 for i in range(0, len(pixels), bpp * 7) if sum(pixels[i : i + 3]) < 600)
    return dark, len(colours)


@pytest.mark.slow
def test_each_report_renders_in_chromium(tmp_path) -> None:
    """A blank page is the control: each report draws far more than it."""
    pages = {
        "blank.html": page("", []).replace("<h1></h1>", ""),
        "search.html": _search_page(),
        "fleet.html": _fleet_page(),
    }
    for name, html in pages.items():
        (tmp_path / name).write_text(html)
    shots = {name: _screenshot(tmp_path / name) for name in pages}
    shots["optimize.html"] = _screenshot(_optimize_page(tmp_path / "optimize"))
    blank_dark, blank_colours = shots.pop("blank.html")
    assert blank_dark == 0, blank_dark
    for name, (dark, colours) in shots.items():
        assert dark > 200 and colours > blank_colours + 5, (name, dark, colours)
