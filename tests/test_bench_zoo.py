"""scripts/bench_zoo.py --summary: the latest row per family x Keras x recipe; what never ran."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench_zoo():
    spec = importlib.util.spec_from_file_location("bench_zoo", ROOT / "scripts" / "bench_zoo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(directory: Path, name: str, meta: dict, rows: list[dict]) -> None:
    (directory / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}))


def _row(family: str, keras: str, recipe: str, **fields) -> dict:
    return {"family": family, "keras": keras, "recipe": recipe, **fields}


def test_the_summary_keeps_the_latest_row_and_lists_what_never_ran(tmp_path):
    zoo = _bench_zoo()
    failed = _row("NASNetMobile", "3", "max-compress", ok=False, error="out of memory", seconds=9)
    fixed = _row(
        "NASNetMobile", "3", "max-compress", ok=True, full_integer=True, float_bytes=10,
        final_bytes=3, gzip_bytes=2, float_accuracy=1.0, final_accuracy=0.9, drop_points=10.0,
        seconds=5,
    )  # fmt: skip
    _run(tmp_path, "zoo-b", {"date": "2026-11-30", "finished": "2026-11-30T23:00"}, [failed])
    _run(tmp_path, "zoo-a", {"date": "2026-12-01", "finished": "2026-12-01T13:15"}, [fixed])
    _run(tmp_path, "zoo-c", {"date": "2026-11-30"}, [_row("MobileNetV2", "2", "int8", ok=False)])
    rows = zoo.summary(tmp_path)
    assert [(r["family"], r["run"]) for r in rows] == [
        ("MobileNetV2", "zoo-c"),
        ("NASNetMobile", "zoo-a"),
    ]
    text = zoo.summary_markdown(rows)
    assert "1 of 2 family x Keras x recipe combinations" in text
    assert "NASNetMobile | Keras 3 | max-compress | ok | yes" in text
    assert "MobileNetV2 Keras 3 int8" in text.split("Not run:")[1]
    assert "NASNetMobile Keras 3 max-compress" not in text.split("Not run:")[1]
