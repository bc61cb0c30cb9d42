"""``tfedge search``: the space, the study (storage, resume, deduplication, workers, killed
trials), the feasible Pareto front, bad input; and one real search on digits.

The study tests use real Optuna and real storages with a cheap measurement
(``tests/search_helpers.py``: figures computed from the recipe, no TensorFlow); the last test
runs real trials (optimize + bench on the local target).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_one_error_line
from tests.search_helpers import CALLS, CheapMeasure, cheap_measure
from tfedge.errors import RecipeError, UsageError
from tfedge.optimize.recipe import parse_recipe
from tfedge.search import search
from tfedge.search.formats import fastest_formats
from tfedge.search.pareto import dominates, feasible, pareto_front
from tfedge.search.space import Space, dimensions, parse_space, recipe_data
from tfedge.search.study import open_storage

CHEAP_SPACE = """
channels: false
low_rank: false
prune: {target_sparsity: [0.3, 0.9]}
cluster: {clusters: [8, 16]}
quant: [int8, float16]
epochs: [1, 1]
budgets: {latency: 0.95, size: 0.2}
"""


@pytest.fixture
def inputs(tmp_path) -> dict:
    """Stand-in model and data files: the cheap measurement only hashes them."""
    files = {}
    for name in ("model.keras", "train.npz", "test.npz"):
        (tmp_path / name).write_bytes(name.encode())
        files[name] = tmp_path / name
    return {
        "model": files["model.keras"],
        "data": files["train.npz"],
        "eval_data": files["test.npz"],
    }


@pytest.fixture
def calls(tmp_path, monkeypatch) -> Path:
    """A file with one line per measured recipe (written by the cheap measurement)."""
    path = tmp_path / "calls.txt"
    monkeypatch.setenv(CALLS, str(path))
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def cheap_search(inputs, out, **options):
    options.setdefault("space", parse_space(CHEAP_SPACE))
    return search(**inputs, output=out, measure=cheap_measure, **options)


# ---- the space -----------------------------------------------------------------------------


def test_every_pass_on_makes_a_valid_recipe():
    space = Space(qat=True)
    params = {name: values[-1] for name, (kind, values) in dimensions(space).items()}
    params.update({"quant": "int8", "epochs": 0})
    recipe = parse_recipe(json.dumps(recipe_data(params, space)))
    assert recipe.pass_names == ["channels", "low_rank", "prune", "cluster", "qat"]
    assert recipe.passes[2].epochs == 1  # prune needs one epoch even when epochs is 0
    floats = recipe_data({"quant": "float32"}, space)
    assert floats == {"schema_version": 1, "passes": [], "convert": {"quant": "none"}}


def test_distill_is_a_dimension_of_the_channels_pass():
    space = parse_space("channels: {keep: [0.5, 0.9]}\ndistill: [false, true]\nquant: [int8]\n")
    assert dimensions(space)["distill"] == ("choice", (False, True))
    params = {"channels": True, "channels.keep": 0.5, "distill": True, "epochs": 2}
    recipe = parse_recipe(json.dumps(recipe_data(params, space)))
    assert recipe.pass_names == ["channels"] and recipe.passes[0].distill
    plain = recipe_data({**params, "distill": False}, space)
    assert not parse_recipe(json.dumps(plain)).passes[0].distill
    # distillation is fine-tuning: not with 0 epochs (the recipe would be refused)
    assert "distill" not in recipe_data({**params, "epochs": 0}, space)["passes"][0]["channels"]
    always = parse_space("channels: {keep: [0.5, 0.9]}\ndistill: true\nquant: [int8]\n")
    assert "distill" not in dimensions(always) and always.distill == (True,)
    assert recipe_data({"channels": True}, always)["passes"][0]["channels"]["distill"] is True
    assert "distill" not in dimensions(Space()) and Space().sha256 == Space(distill=[False]).sha256
    assert Space().sha256 != Space(distill=(False, True)).sha256
    with pytest.raises(RecipeError, match="distill"):
        parse_space("distill: [maybe]")


def test_space_errors_name_the_key():
    with pytest.raises(RecipeError, match="unknown option 'prnue'") as err:
        parse_space("prnue: {target_sparsity: [0.3, 0.9]}")
    assert "did you mean 'prune'" in err.value.hint
    with pytest.raises(RecipeError, match=r"target_sparsity = \[0.9, 0.3\] is empty"):
        parse_space("prune: {target_sparsity: [0.9, 0.3]}")
    empty = "channels: false\nlow_rank: false\nprune: false\ncluster: false\nquant: [int8]\n"
    with pytest.raises(RecipeError, match="the search space is empty"):
        dimensions(parse_space(empty + "epochs: [1, 1]"))


def test_front_is_feasible_and_not_dominated():
    def row(n, score, p50, gzip, excess):
        return dict(
            number=n,
            recipe_sha256=str(n),
            score=score,
            p50_ms=p50,
            gzip_bytes=gzip,
            excess=[excess],
        )

    rows = [
        row(0, 0.99, 1.0, 900, 0.5),  # the most accurate, but over budget
        row(1, 0.95, 1.0, 500, -0.1),
        row(2, 0.94, 1.1, 600, -0.1),  # dominated by 1
        row(3, 0.90, 0.5, 400, 0.0),  # exactly on the budget: feasible
    ]
    front = pareto_front(rows)
    assert [r["number"] for r in front] == [1, 3]
    assert dominates(rows[1], rows[2]) and not dominates(rows[1], rows[3])
    assert not feasible(rows[0]) and feasible(rows[3])


# ---- the study -----------------------------------------------------------------------------


def test_search_writes_the_front_and_a_rerun_resumes(inputs, tmp_path, calls):
    out = tmp_path / "out"
    first = cheap_search(inputs, out, trials=4)
    assert (out / "study.db").is_file() and not (out / "study.journal").exists()
    assert len(first.trials) + len(first.failed) == 4
    assert first.budget_kind == "relative" and [b["name"] for b in first.budgets] == [
        "latency",
        "size",
    ]
    report = json.loads((out / "pareto.json").read_text())
    front = report["front"]
    assert front and all(feasible(r) for r in front)
    assert not any(dominates(a, b) for a in front for b in front)
    best = report["best"]
    assert best == front[0] and (out / "best" / "model.tflite").is_file()
    again = parse_recipe((out / "best" / "recipe.yaml").read_text())
    assert again.canonical_sha256 == best["recipe_sha256"]
    assert "| trial | recipe | accuracy |" in (out / "pareto.md").read_text()
    measured = len(_lines(calls))

    second = cheap_search(inputs, out, trials=6)  # the same search, two more trials
    numbers = sorted(r["number"] for r in second.trials)
    assert numbers == list(range(6))  # the first four kept, two added
    assert len(_lines(calls)) - measured <= 2  # at most the two new ones measured
    third = cheap_search(inputs, out, trials=6)  # nothing left to do
    assert len(third.trials) == 6 and len(_lines(calls)) - measured <= 2


def test_a_duplicate_recipe_is_not_measured_again(inputs, tmp_path, calls):
    only_quant = "channels: false\nlow_rank: false\nprune: false\ncluster: false\n"
    space = parse_space(only_quant + "quant: [int8, float16]\nepochs: [1, 1]\n")
    result = cheap_search(inputs, tmp_path / "out", trials=5, space=space)
    # two recipes (int8, float16); the int8 one is the baseline's, measured before the trials
    assert len(result.trials) == 5
    assert sorted(_lines(calls)) == sorted(set(_lines(calls))) and len(_lines(calls)) == 2
    duplicates = [r for r in result.trials if r["duplicate_of"] is not None]
    assert len(duplicates) >= 3
    assert len({r["recipe_sha256"] for r in result.trials}) == 2
    # the format alone, measured: the search says which is fastest on its target
    assert result.formats["fastest"] == "int8"
    assert result.formats["basis"].startswith("the format alone")
    line = "fastest format on local: int8 1 ms; float16 2 ms (2.00x slower)"
    assert line in result.formats["line"] and line in (tmp_path / "out" / "pareto.md").read_text()


def test_fastest_format_falls_back_to_the_fastest_trial_of_each_format():
    def row(n, quant, p50, passes=()):
        return {
            "number": n,
            "p50_ms": p50,
            "recipe": {"passes": list(passes), "convert": {"quant": quant}},
        }

    pruned = [{"prune": {"target_sparsity": 0.5}}]
    found = fastest_formats([row(0, "none", 0.5, pruned), row(1, "int8", 0.8, pruned)], "qemu")
    assert found["fastest"] == "float32" and "passes included" in found["basis"]
    assert found["by_quant"]["int8"]["number"] == 1
    assert fastest_formats([row(0, "int8", 0.8)], "qemu") is None  # one format: no comparison


def test_budgets_exclude_trials_from_the_front(inputs, tmp_path, capsys):
    tight = CHEAP_SPACE.replace("size: 0.2", "size: 0.1")  # gzip <= 10 kB
    result = cheap_search(inputs, tmp_path / "out", trials=6, space=parse_space(tight))
    over = [r for r in result.trials if r["gzip_bytes"] > 10_000]
    assert over and all(not feasible(r) for r in over)
    front_numbers = {r["number"] for r in result.front}
    assert not front_numbers & {r["number"] for r in over}
    impossible = parse_space(CHEAP_SPACE.replace("size: 0.2", "size: 0.001"))
    none = cheap_search(inputs, tmp_path / "none", trials=3, space=impossible)
    assert none.best is None and not (tmp_path / "none" / "best").exists()
    _check_closest(none, tmp_path / "none", capsys)
    _check_plots(tmp_path / "out", result)
    _check_plots(tmp_path / "none", none)


def _check_closest(none, out: Path, capsys) -> None:
    """Nothing meets the budgets: the closest trials, what each breaks and by how much, in
    the result, pareto.md, report.html and the command's output."""
    import html

    from tfedge.cli.search import _print

    assert len(none.closest) == min(3, len({r["recipe_sha256"] for r in none.trials}))
    worst = [max(b["excess"] for b in c["broken"]) for c in none.closest]
    assert worst == sorted(worst)  # nearest to feasible first
    for found in none.closest:
        row = next(r for r in none.trials if r["number"] == found["number"])
        size = next(b for b in found["broken"] if b["budget"] == "size")
        assert size["value"] == row["gzip_bytes"] and size["limit"] == 100  # 0.001 x 100 kB
        assert size["excess"] == pytest.approx(row["gzip_bytes"] / 100 - 1)
        text = f"size {row['gzip_bytes']} B > 100 B budget: {100 * size['excess']:.0f}% over"
        assert any(o.startswith(text) and "(relative: 0.001 x float32" in o for o in found["over"])
    first = f"trial {none.closest[0]['number']}: {none.closest[0]['over'][0]}"
    assert first in (out / "pareto.md").read_text()
    assert f"closest: {html.escape(first)}" in (out / "report.html").read_text()
    capsys.readouterr()
    _print(none)
    printed = capsys.readouterr().out
    assert "No trial meets every budget. Closest:" in printed and f"  {first}" in printed


SVG = "{http://www.w3.org/2000/svg}"


def _check_plots(out: Path, result) -> None:
    """Both plots (as files and inline in report.html): a point per measured trial, filled
    when feasible, the front joined in order, the size budget dashed, the best ringed."""
    import re
    import xml.etree.ElementTree as ET

    html = (out / "report.html").read_text()
    inline = re.findall(r"<svg .*?</svg>", html, re.S)
    files = [(out / n).read_text().strip() for n in ("pareto_latency.svg", "pareto_size.svg")]
    assert inline == files and "http" not in html.replace(SVG[1:-1], "")
    front = sorted(r["number"] for r in result.front)
    for svg, budget in zip(files, ("latency", "size")):
        root = ET.fromstring(svg)
        points = [c for c in root.iter(f"{SVG}circle") if "trial" in c.get("class", "")]
        assert sorted(int(c.get("data-trial")) for c in points) == sorted(
            r["number"] for r in result.trials
        )
        for c in points:
            row = next(r for r in result.trials if r["number"] == int(c.get("data-trial")))
            assert (c.get("fill") == "none") == (not feasible(row))
        assert sorted(int(c.get("data-trial")) for c in points if c.get("data-front")) == front
        lines = [p for p in root.iter(f"{SVG}polyline") if p.get("class") == "front"]
        assert len(lines) == (len(front) > 1)
        rings = [c for c in root.iter(f"{SVG}circle") if c.get("class") == "best"]
        assert [int(c.get("data-trial")) for c in rings] == (
            [result.best["number"]] if result.best else []
        )
        budgets = [b for b in root.iter(f"{SVG}line") if b.get("class") == "budget"]
        assert len(budgets) == 1 and budgets[0].get("stroke-dasharray")
        assert f"{budget} budget (relative)" in svg


def test_two_workers_share_a_journal_study(inputs, tmp_path, calls):
    out = tmp_path / "out"
    result = cheap_search(inputs, out, trials=4, workers=2)
    assert (out / "study.journal").is_file() and not (out / "study.db").exists()
    assert len(result.trials) + len(result.failed) == 4
    assert len({r["number"] for r in result.trials}) == len(result.trials)
    with pytest.raises(UsageError, match="SQLite"):
        cheap_search(inputs, out, trials=4, workers=2, storage=f"sqlite:///{tmp_path}/x.db")


def test_an_inventory_measures_on_every_device_one_trial_at_a_time(inputs, tmp_path):
    """Two devices, three workers: both devices measure, at the same time as each other,
    never two trials at once on one device (the third worker waits for a free one); and the
    study ends at exactly --trials."""
    import optuna

    (tmp_path / "devices.yaml").write_text(
        "devices:\n  - {name: a, target: local}\n  - {name: b, target: local}\n"
    )
    out = tmp_path / "out"
    slow = CheapMeasure(bench_seconds=0.3, meet=str(tmp_path / "meet"), meet_count=2)
    options = dict(space=parse_space(CHEAP_SPACE), measure=slow, study="s", trials=7, workers=3)
    result = search(**inputs, output=out, inventory=tmp_path / "devices.yaml", **options)
    assert len(result.trials) + len(result.failed) == 7  # exact, though three workers ran
    study = optuna.load_study(study_name="s", storage=open_storage(f"journal:{out}/study.journal"))
    windows = [t.user_attrs["measured_on"] for t in study.trials if "measured_on" in t.user_attrs]
    by_device = {
        name: sorted((w["started"], w["ended"]) for w in windows if w["device"] == name)
        for name in "ab"
    }
    assert all(by_device.values()), by_device  # both devices measured trials
    for spans in by_device.values():  # never two at once on one device
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), spans
    (a0, a1), (b0, b1) = by_device["a"][0], by_device["b"][0]
    assert a0 < b1 and b0 < a1  # the devices measured concurrently
    assert {r["device"] for r in result.trials} <= {"a", "b"}
    with pytest.raises(UsageError, match="exclude each other"):
        search(**inputs, output=out, inventory=tmp_path / "devices.yaml", target="local")
    (tmp_path / "mixed.yaml").write_text("devices:\n  - {target: local}\n  - {target: qemu}\n")
    with pytest.raises(UsageError, match="mixes local and qemu"):
        search(**inputs, output=tmp_path / "mixed", inventory=tmp_path / "mixed.yaml")
    assert not (tmp_path / "mixed").exists()


@pytest.mark.tf
def test_a_trial_is_benched_on_the_inventory_device_it_took(digits_int8, tmp_path):
    """The real bench step: the device's target, its threads and profile, its name kept."""
    from tfedge.search.devices import from_inventory
    from tfedge.search.objectives import Built, Inputs, TrialRunner
    from tfedge.search.space import Measure

    (tmp_path / "devices.yaml").write_text(
        "devices:\n  - {name: a, target: local}\n  - {name: b, target: local, threads: 1}\n"
    )
    devices, profile = from_inventory(tmp_path / "devices.yaml", "local")
    assert profile == "local" and [d.profile for d in devices] == ["local", "local"]
    runner = TrialRunner(Inputs("m", "d", "e"), Measure(runs=3, warmup=1, min_secs=0.05))
    size = digits_int8.stat().st_size
    built = Built(str(digits_int8), 0.9, 0.9, None, size, size // 2, 4 * size)
    measured = runner.bench(built, devices[1], tmp_path)
    assert measured.bench == {"target": "local", "emulated": False, "threads": 1, "device": "b"}
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert measured.p50_ms == bench["latency_us"]["p50"] / 1000 > 0
    assert (measured.score, measured.gzip_bytes, measured.model) == (0.9, size // 2, built.model)


def test_a_killed_trial_is_failed_and_retried(inputs, tmp_path):
    import optuna

    from tfedge.search.space import suggest

    out = tmp_path / "out"
    space = parse_space(CHEAP_SPACE)
    cheap_search(inputs, out, trials=2, space=space, study="s")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out}/study.db")
    killed = study.ask()  # left RUNNING, as by a worker killed mid-trial
    params = suggest(killed, space)
    result = cheap_search(inputs, out, trials=3, space=space, study="s")
    assert result.recovered == [killed.number]
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{out}/study.db").trials
    assert trials[killed.number].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert retried[0].params == params
    assert len(result.trials) == 3


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on loopback (``tests/pg_server.py``); its database URL."""
    from tests.pg_server import postgres_server

    with postgres_server("study") as url:
        yield url


@pytest.mark.slow
def test_workers_and_machines_share_a_postgresql_study(inputs, tmp_path, postgres):
    first = cheap_search(inputs, tmp_path / "a", trials=4, workers=2, storage=postgres, study="s")
    assert not (tmp_path / "a" / "study.db").exists() and first.storage == postgres
    assert len(first.trials) + len(first.failed) == 4
    # a second machine (another OUTDIR) joins the same study and adds two trials
    second = cheap_search(
        inputs, tmp_path / "b", trials=len(first.trials) + 2, storage=postgres, study="s"
    )
    numbers = [r["number"] for r in second.trials]
    assert len(numbers) == len(set(numbers)) == len(first.trials) + 2
    assert {r["number"] for r in first.trials} < set(numbers)
    assert (tmp_path / "b" / "best" / "recipe.yaml").is_file() == (second.best is not None)


@pytest.mark.slow
def test_a_search_killed_mid_trial_resumes(inputs, tmp_path, calls, monkeypatch):
    import signal
    import subprocess
    import sys
    import time

    from tests.search_helpers import HANG

    out, marker = tmp_path / "out", tmp_path / "hanging"
    monkeypatch.setenv(HANG, f"3:{marker}")  # the third measurement (after the baseline) hangs
    code = "import sys; from tests.search_helpers import run_search as r; r(*sys.argv[1:])"
    root = Path(__file__).resolve().parent.parent
    args = [sys.executable, "-c", code, str(out), "6", CHEAP_SPACE]
    proc = subprocess.Popen(args, cwd=root, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), proc.communicate(timeout=5)[1].decode()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    monkeypatch.delenv(HANG)
    result = cheap_search(inputs, out, trials=4)
    assert len(result.recovered) == 1  # the killed trial: failed, then retried
    killed = result.recovered[0]
    numbers = sorted(r["number"] for r in result.trials)
    assert killed >= 1 and set(range(killed)) <= set(numbers)  # the finished ones kept
    assert killed not in numbers and len(numbers) == 4
    assert len(_lines(calls)) >= 4  # the killed recipe measured again


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "space_text", "code", "fragments"),
    [
        ((), "prnue: {target_sparsity: [0.3, 0.9]}\n", 1, ("unknown option 'prnue'", "prune")),
        (("--profile", "rpi9"), None, 1, ("rpi9",)),
        (("--trials", "0"), None, 2, ("--trials must be at least 1",)),
        (("--timeout", "soon"), None, 2, ("not a duration",)),
        (("--storage", "postgresql://u@127.0.0.1:9/db"), None, 1, ("cannot open the study",)),
    ],
)
def test_bad_input_is_one_error_line(run_cli, inputs, tmp_path, extra, space_text, code, fragments):
    out = tmp_path / "out"
    args = ["search", inputs["model"], "--data", inputs["data"], "--eval", inputs["eval_data"]]
    if space_text is not None:
        (tmp_path / "space.yaml").write_text(space_text)
        args += ["--space", tmp_path / "space.yaml"]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(*args, *extra, "-o", out, expect=code)
    assert_one_error_line(result, *fragments)
    assert "hint:" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize(
    ("inventory", "extra", "code", "fragments"),
    [
        ("- {target: local}\n", (), 2, ("no devices list",)),
        ("devices:\n  - {taget: local}\n", (), 2, ("devices[0].target", "required")),
        ("devices:\n  - {target: local}\n", ("--target", "qemu"), 2, ("exclude each other",)),
        ("devices:\n  - {target: local}\n  - {target: qemu}\n", (), 2, ("mixes local and qemu",)),
        (
            "devices:\n  - {target: local, profile: rpi4}\n  - {name: b, target: local}\n",
            (),
            2,
            ("different profiles",),
        ),
    ],
)
def test_a_bad_inventory_is_one_error_line(
    run_cli, inputs, tmp_path, inventory, extra, code, fragments
):
    (tmp_path / "devices.yaml").write_text(inventory)
    args = ["search", inputs["model"], "--data", inputs["data"], "--eval", inputs["eval_data"]]
    before = sorted(p.name for p in tmp_path.iterdir())
    args += ["--inventory", tmp_path / "devices.yaml", *extra, "-o", tmp_path / "out"]
    result = run_cli(*args, expect=code)
    assert_one_error_line(result, *fragments)
    assert "hint:" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.tf
def test_a_searched_pass_that_does_not_apply_is_one_error_line(run_cli, inputs, tmp_path):
    from tfedge._tf import import_keras

    k = import_keras()
    model = k.Sequential([k.layers.InputLayer(input_shape=(8,)), k.layers.Dense(3, name="head")])
    model.save(tmp_path / "one_dense.keras")
    space = tmp_path / "space.yaml"
    space.write_text("channels: false\nprune: false\ncluster: false\nquant: [int8]\n")
    args = ["search", tmp_path / "one_dense.keras", "--data", inputs["data"]]
    args += ["--eval", inputs["eval_data"], "--space", space, "-o", tmp_path / "out"]
    result = run_cli(*args, expect=1)
    assert_one_error_line(result, "space:", "low_rank", "factorised")
    assert "hint:" in result.stderr and not (tmp_path / "out").exists()


# ---- a real search -------------------------------------------------------------------------


@pytest.mark.tf
@pytest.mark.slow
def test_real_search_on_digits(digits, tmp_path, run_cli):
    """Real trials end to end: the front is feasible and non-dominated, best/ meets every
    budget, and best/recipe.yaml rebuilds the model with `tfedge optimize`."""
    from tfedge.optimize.pipeline import optimize

    space = tmp_path / "space.yaml"
    space.write_text(
        "channels: false\nlow_rank: false\ncluster: false\n"
        "prune: {target_sparsity: [0.6, 0.8]}\nquant: [int8, float16]\nepochs: [1, 1]\n"
        "budgets: {latency: 10.0, size: 0.2}\n"
        "measure: {runs: 5, warmup: 1, min_secs: 0.1}\n"
    )
    out = tmp_path / "out"
    args = ["search", digits.model, "--data", digits.train, "--eval", digits.test]
    # seed 0 samples prune 0.72 + int8 (fine-tuned), then int8 alone (the baseline's recipe,
    # not run again), which breaks the size budget: int8 gzip is ~1/4 of float32's bytes
    args += ["--space", space, "--trials", "2", "--profile", "rpi4"]
    args += ["--json", "-o", out]
    report = json.loads(run_cli(*args).stdout)
    assert report["budget_kind"] == "relative"  # rpi4 measured on this host: a stand-in
    assert len(report["trials"]) == 2 and not report["failed"]
    assert [r["duplicate_of"] for r in report["trials"]] == [None, -1]
    assert {r["recipe"]["convert"]["quant"] for r in report["trials"]} <= {"int8", "float16"}
    front, trials = report["front"], report["trials"]
    assert front and all(feasible(r) for r in front)
    assert not any(dominates(t, f) for t in trials if feasible(t) for f in front)
    best = report["best"]
    assert best == front[0] and best["accuracy"] > 0.8
    assert [list(p) for p in best["recipe"]["passes"]] == [["prune"]]  # trained: worth rebuilding
    value = {
        "latency": "p50_ms",
        "size": "gzip_bytes",
        "ram": "peak_rss_mb",
        "bytes": "tflite_bytes",
    }
    for budget in report["budgets"]:
        assert best[value[budget["name"]]] <= budget["limit"], budget
    assert "float32" in next(b for b in report["budgets"] if b["name"] == "size")["how"]
    bench = json.loads((out / "best" / "bench.json").read_text())
    assert bench["latency_us"]["p50"] / 1000 == pytest.approx(best["p50_ms"])
    assert bench["target"] == "local"
    assert (out / "best" / "model.tflite").read_bytes()[4:8] == b"TFL3"
    assert f"trial {best['number']}" in (out / "report.html").read_text()
    again = optimize(
        digits.model,
        str(out / "best" / "recipe.yaml"),
        digits.train,
        digits.test,
        tmp_path / "again",
    )
    assert abs(again.final.accuracy - best["accuracy"]) <= 0.005  # within 0.5 points
