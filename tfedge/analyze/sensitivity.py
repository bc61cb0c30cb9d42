"""``analyze sensitivity``: what each channel group and each Dense / 1x1 conv can lose alone.

For every prunable channel group (``tfedge.passes.channel_sensitivity``: the group cut to each
keep ratio, by filter norm, the rest of the model whole) and every layer ``low_rank`` would
factorise (``tfedge.passes.sensitivity``: its kernel cut to ``ratio`` of its full SVD rank),
the model is scored on the evaluation data without any fine-tuning: accuracy in points for
integer labels, the mean squared error for float targets. ``drop`` is how much worse than the
uncut model (points of accuracy, or percent more squared error). The curves come sorted by
sensitivity, the mean drop over the ratios: the most robust first.

The work runs in the caller's process with tf_keras, as ``optimize --dry-run`` does, on the
model the optimize worker would start from (``load_model_for``: Keras 3 files through the
verified bridge, nested models flattened) and with the worker's data checks: nothing trains,
so no worker process is needed. Results are cached by the model's and the data's sha256 and
the options, in ``$XDG_CACHE_HOME/tfedge/sensitivity/`` (default ``~/.cache``): a second run
reads the JSON and does not import TensorFlow.

Example:
    >>> report = analyze_sensitivity("model.keras", "train.npz", "test.npz")
    >>> [(c.kind, c.name, round(c.sensitivity, 1)) for c in report.curves][:2]
    [('channels', 'conv1', 0.4), ('rank', 'fc1', 1.2)]
    >>> Path("sensitivity.svg").write_text(report.svg())
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfedge.errors import DataError, ModelLoadError, UsageError
from tfedge.io.data import Dataset, load_data, num_samples, take

DEFAULT_RATIOS = (0.75, 0.5, 0.25)
CRITERIA = ("l1", "l2", "bn", "taylor")  # as the channels pass; taylor on the training data
MAX_SAMPLES = 1000  # evaluation samples scored per cut, at most (a seeded draw)
CACHE_VERSION = 1  # bump when the analysis or the stored form changes


@dataclass(frozen=True)
class Point:
    """The model's score with one group or layer cut to ``ratio`` (``kept`` channels or rank)."""

    ratio: float
    kept: int
    score: float
    drop: float
    macs_fraction: float | None = None  # the whole model's MACs with this cut (channels)


@dataclass
class Curve:
    """One channel group (``kind`` channels) or one factorisable layer (``kind`` rank).

    ``size``: the group's channels, or the layer's full rank min(in, out).
    """

    kind: str
    name: str
    layers: list[str]
    size: int
    points: list[Point] = field(default_factory=list)

    @property
    def sensitivity(self) -> float:
        """The mean drop over the ratios: lower is more robust."""
        return float(np.mean([p.drop for p in self.points])) if self.points else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "sensitivity": self.sensitivity}

    @classmethod
    def from_dict(cls, data: dict) -> Curve:
        points = [Point(**p) for p in data["points"]]
        return cls(data["kind"], data["name"], list(data["layers"]), data["size"], points)


@dataclass
class SensitivityReport:
    """The analysis of one model on one data set; ``curves`` sorted most robust first."""

    model: str
    metric: str  # "accuracy" (points, higher is better) or "mse" (lower is better)
    baseline: float
    samples: int
    ratios: list[float]
    options: dict
    curves: list[Curve]
    left_whole: list[dict] = field(default_factory=list)  # groups kept whole: layers, reasons
    cached: bool = False

    @property
    def drop_unit(self) -> str:
        return "points" if self.metric == "accuracy" else "% more MSE"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["curves"] = [c.to_dict() for c in self.curves]
        data["drop_unit"] = self.drop_unit
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SensitivityReport:
        return cls(
            model=data["model"],
            metric=data["metric"],
            baseline=data["baseline"],
            samples=data["samples"],
            ratios=list(data["ratios"]),
            options=dict(data["options"]),
            curves=[Curve.from_dict(c) for c in data["curves"]],
            left_whole=list(data["left_whole"]),
            cached=bool(data.get("cached", False)),
        )

    def rows(self) -> list[list]:
        """Table rows: kind, name, size, then ``kept score (drop)`` per ratio, and the mean."""
        return [
            [c.kind, c.name, c.size]
            + [f"{p.kept}: {p.score:.4g} ({p.drop:+.3g})" for p in c.points]
            + [f"{c.sensitivity:.3g}"]
            for c in self.curves
        ]

    def headers(self) -> list[str]:
        return ["kind", "group / layer", "size", *[f"at {r:g}" for r in self.ratios], "mean drop"]

    def svg(self) -> str:
        """A small plot: score against the kept ratio, one line per group or layer."""
        return plot_svg(self)


def analyze_sensitivity(
    model,
    data,
    eval_data=None,
    *,
    ratios: Iterable[float] = DEFAULT_RATIOS,
    criterion: str = "l1",
    round_to: int = 8,
    minimum: int = 8,
    max_samples: int = MAX_SAMPLES,
    seed: int = 0,
    cache: bool = True,
    trust_model: bool = False,
    log: Callable[[str], None] | None = None,
) -> SensitivityReport:
    """Score ``model`` with each channel group and each Dense / 1x1 conv cut alone.

    Args:
        model: a ``.keras``/``.h5`` file (Keras 3 or tf_keras) or an in-memory Keras model.
        data: the training data (path or ``Dataset``): checked against the model, and scored
            on (a seeded held-out slice) when ``eval_data`` is not given.
        eval_data: the data the cuts are scored on (labels or targets needed).
        ratios: keep ratios in (0, 1): channels kept, or the share of the full SVD rank.
        criterion, round_to, minimum: which channels a group keeps (as the ``channels`` pass).
        max_samples: evaluation samples scored per cut, at most (a seeded draw).
        cache: read and write the result in the user's cache (see ``cache_dir``).

    Raises:
        UsageError: a ratio outside (0, 1), or a bad option.
        DataError: the data does not fit the model, or has no labels.
        ModelLoadError: the model cannot be loaded, or nothing in it can be analysed.
    """
    options = _options(ratios, criterion, round_to, minimum, max_samples, seed)
    train = _dataset(data, "training data")
    evals = _dataset(eval_data, "evaluation data") if eval_data is not None else None
    key = cache_key(model, train, evals, options) if cache else ""
    if key and (hit := read_cache(key)) is not None:
        hit.model = _label(model)
        return hit
    report = _analyse(model, train, evals, options, trust_model, log or (lambda _: None))
    if key:
        write_cache(key, report)
    return report


def parse_ratios(text: str) -> tuple[float, ...]:
    """``"0.75,0.5,0.25"`` as numbers, checked (see ``check_ratios``)."""
    try:
        values = [float(word) for word in text.split(",") if word.strip()]
    except ValueError:
        raise UsageError(
            f"--ratios '{text}' is not a list of numbers",
            "give keep ratios in (0, 1) separated by commas, e.g. --ratios 0.75,0.5,0.25",
        ) from None
    return check_ratios(values)


def check_ratios(ratios: Iterable[float]) -> tuple[float, ...]:
    """The ratios, distinct and sorted high to low; UsageError unless each is in (0, 1)."""
    values = [float(r) for r in ratios]
    bad = [r for r in values if not 0 < r < 1]
    if bad or not values:
        what = f"ratio {bad[0]:g} is outside (0, 1)" if bad else "no ratio given"
        raise UsageError(
            what, "keep ratios are fractions of the channels or rank kept, e.g. 0.75,0.5,0.25"
        )
    return tuple(sorted(set(values), reverse=True))


# ---- the cache ------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tfedge/sensitivity``, by default ``~/.cache/tfedge/sensitivity``."""
    root = os.environ.get("XDG_CACHE_HOME") or ""
    base = Path(root) if os.path.isabs(root) else Path.home() / ".cache"
    return base / "tfedge" / "sensitivity"


def cache_key(model, train: Dataset, evals: Dataset | None, options: dict) -> str:
    """sha256 over the model's and the data's sha256 and the options."""
    from tfedge.optimize.resume import data_fingerprint, model_fingerprint

    if isinstance(model, (str, os.PathLike)) and not os.path.exists(model):
        raise ModelLoadError(f"{model}: no such file or directory", "check the model path")
    parts = {
        "version": CACHE_VERSION,
        "model": model_fingerprint(model),
        "data": data_fingerprint(train),
        "eval": data_fingerprint(evals) if evals is not None else None,
        "options": options,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_cache(key: str) -> SensitivityReport | None:
    """The cached report for ``key``, or None (absent or unreadable: computed again)."""
    try:
        data = json.loads((cache_dir() / f"{key}.json").read_text())
        report = SensitivityReport.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    report.cached = True
    return report


def write_cache(key: str, report: SensitivityReport) -> None:
    """Store ``report`` under ``key``; a cache that cannot be written is skipped silently."""
    from tfedge.errors import OutputError
    from tfedge.fsutil import write_bytes_atomic

    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(folder / f"{key}.json", json.dumps(report.to_dict()).encode())
    except (OSError, OutputError):
        pass


# ---- the analysis ---------------------------------------------------------------------------


def _options(ratios, criterion, round_to, minimum, max_samples, seed) -> dict:
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion '{criterion}'", f"one of {', '.join(CRITERIA)}")
    for name, value in (("round_to", round_to), ("minimum", minimum), ("samples", max_samples)):
        if int(value) < 1:
            raise UsageError(f"{name} must be at least 1, not {value}", f"e.g. {name} 8")
    return {
        "ratios": list(check_ratios(ratios)),
        "criterion": criterion,
        "round_to": int(round_to),
        "minimum": int(minimum),
        "max_samples": int(max_samples),
        "seed": int(seed),
    }


def _dataset(data, what: str) -> Dataset:
    ds = data if isinstance(data, Dataset) else load_data(data)
    if ds.y is None:
        raise DataError(
            f"{what} {ds.source} has no labels or targets",
            "the analysis scores each cut: give an .npz with arrays x and y",
        )
    return ds


def _analyse(model, train, evals, options, trust_model, log) -> SensitivityReport:
    from tfedge.passes.sensitivity import score

    keras_model = _load(model, trust_model)
    ctx, x, y, classification = _scoring_data(keras_model, train, evals, options)
    baseline = score(keras_model, x, y, classification)
    log(f"baseline {'accuracy' if classification else 'mse'} {baseline:.4g} on {len(y)} samples")
    curves, whole = _channel_curves(keras_model, ctx, x, y, options, log)
    curves += _rank_curves(keras_model, x, y, classification, options, log)
    if not curves:
        raise ModelLoadError(
            f"nothing in {_label(model)} can be analysed: no channel group can be removed "
            "and no Dense or 1x1 Conv2D can be factorised",
            "the analysis needs Conv/Dense layers that do not produce the model's output; "
            + (f"left whole: {whole[0]['reasons'][0]}" if whole and whole[0]["reasons"] else ""),
        )
    return SensitivityReport(
        model=_label(model),
        metric="accuracy" if classification else "mse",
        baseline=baseline,
        samples=int(len(y)),
        ratios=options["ratios"],
        options=options,
        curves=sorted(curves, key=lambda c: (c.sensitivity, c.kind, c.name)),
        left_whole=whole,
    )


def _label(model) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else str(model.name)


def _load(model, trust_model: bool):
    """The tf_keras model the optimize worker would start from (Keras 3 through the bridge)."""
    from tfedge.io.models import load_tf_keras_model, trusting

    with trusting(trust_model):
        return load_tf_keras_model(model)


def _scoring_data(model, train: Dataset, evals: Dataset | None, options: dict):
    """Inputs (arranged for the model), labels and the metric the cuts are scored on."""
    from tfedge.io.data import as_float32
    from tfedge.optimize.worker import check_inputs
    from tfedge.passes.base import PassContext
    from tfedge.passes.low_rank import held_out

    check_inputs(model, train, evals or train)
    ctx = PassContext(x=as_float32(train.x), y=np.asarray(train.y), seed=options["seed"])
    if evals is None:
        x, y = held_out(ctx, model)
    else:
        x, y = ctx.inputs_for(model, as_float32(evals.x)), np.asarray(evals.y)
    x, y = _capped(x, y, options["max_samples"], options["seed"])
    classification = ctx.classification
    _check_targets(model, y, classification, evals or train)
    return ctx, x, y, classification


def _capped(x, y, limit: int, seed: int):
    n = num_samples(x) if not isinstance(x, list) else len(x[0])
    if n <= limit:
        return x, y
    pick = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    x = [a[pick] for a in x] if isinstance(x, list) else take(x, pick)
    return x, y[pick]


def _check_targets(model, y: np.ndarray, classification: bool, ds: Dataset) -> None:
    width = int(np.prod([d or 1 for d in model.outputs[0].shape[1:]]))
    if classification and y.reshape(len(y), -1).shape[1] != 1:
        raise DataError(
            f"{ds.source}: integer labels must be one class index per sample, got shape "
            f"{tuple(y.shape)}",
            "give y as class indices (shape (n,)), or float targets for an MSE",
        )
    if not classification and y.reshape(len(y), -1).shape[1] != width:
        raise DataError(
            f"{ds.source}: targets have {y.reshape(len(y), -1).shape[1]} values per sample, "
            f"the model's output {width}",
            "give float targets shaped like the model's output, or integer class labels",
        )


def _rank_curves(model, x, y, classification: bool, options: dict, log) -> list[Curve]:
    """Each layer ``low_rank`` would factorise, its kernel cut to each ratio of its rank."""
    from tfedge.passes.low_rank import LowRank
    from tfedge.passes.sensitivity import rank_sensitivity

    names = LowRank().selected(model)
    if not names:
        return []
    ranks = {n: _ranks(model.get_layer(n), options["ratios"]) for n in names}
    log(f"ranks: {len(names)} layer(s) at {len(options['ratios'])} ratio(s)")
    table = rank_sensitivity(model, names, x, y, classification, ranks=ranks)
    curves = []
    for name, layer in table.layers.items():
        full = min(layer.n_in, layer.n_out)
        points = [
            Point(ratio, row.rank, row.score, row.drop)
            for ratio, row in zip(options["ratios"], layer.rows, strict=True)
        ]
        curves.append(Curve("rank", name, [name], full, points))
    return curves


def _ranks(layer, ratios: list[float]) -> list[int]:
    kernel = layer.get_weights()[0]
    full = min(int(np.prod(kernel.shape[:-1])), int(kernel.shape[-1]))
    return [max(1, round(r * full)) for r in ratios]


def _channel_curves(model, ctx, x, y, options: dict, log) -> tuple[list[Curve], list[dict]]:
    """Each prunable channel group cut alone to each keep ratio; the groups left whole."""
    from tfedge.passes.channel_graph import ChannelGraph

    graph = ChannelGraph(model)
    whole = [
        {"layers": list(g.members), "reasons": list(g.reasons)}
        for g in graph.groups
        if not g.prunable
    ]
    prunable = [g for g in graph.groups if g.prunable]
    if not prunable:
        return [], whole
    log(f"channels: {len(prunable)} group(s) at {len(options['ratios'])} ratio(s)")
    return _group_curves(model, graph, ctx, x, y, options), whole


def _group_curves(model, graph, ctx, x, y, options: dict) -> list[Curve]:
    """The groups cut as the ``channels`` pass would rank their channels (taylor: on a sample
    of the training data, as the pass computes it)."""
    from tfedge.passes.channel_sensitivity import channel_sensitivity
    from tfedge.passes.channels import Channels

    ranking = Channels(criterion=options["criterion"]).ranking(model, graph, ctx)
    found = channel_sensitivity(
        model,
        graph,
        x,
        y,
        ratios=tuple(options["ratios"]),
        criterion=ranking,
        round_to=options["round_to"],
        minimum=options["minimum"],
        max_samples=options["max_samples"],
    )
    return [_group_curve(g.to_json()) for g in found]


def group_report(label: str, table: list[dict]) -> SensitivityReport:
    """A report from the ``channels`` pass's own sensitivity table (its stage metrics)."""
    curves = sorted((_group_curve(row) for row in table), key=lambda c: c.sensitivity)
    first = table[0]
    ratios = sorted({float(row["keep"]) for row in first["rows"]}, reverse=True)
    return SensitivityReport(
        model=label,
        metric=str(first["metric"]),
        baseline=float(first["baseline"]),
        samples=0,
        ratios=ratios,
        options={"criterion": first.get("criterion")},
        curves=curves,
    )


def _group_curve(data: dict) -> Curve:
    """A ``GroupSensitivity`` (its JSON form) as a curve named after its first layer."""
    layers = list(data["layers"])
    name = layers[0] + (f" (+{len(layers) - 1})" if len(layers) > 1 else "")
    points = [
        Point(
            float(row["keep"]),
            int(row["channels"]),
            float(row["score"]),
            float(row["drop"]),
            float(row["macs_fraction"]),
        )
        for row in data["rows"]
    ]
    return Curve("channels", name, layers, int(data["channels"]), points)


# ---- the plot -------------------------------------------------------------------------------

WIDTH, HEIGHT, MARGIN = 640, 360, 48
LEGEND = 12  # the most sensitive curves are named in the legend; every line has a tooltip
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def plot_svg(report: SensitivityReport) -> str:
    """A hand-written SVG: score (y) against the ratio kept (x, 1 = the uncut baseline)."""
    scores = [report.baseline] + [p.score for c in report.curves for p in c.points]
    low, high = min(scores), max(scores)
    span = (high - low) or 1.0
    ratios = [1.0, *report.ratios]
    left = min(ratios)

    def at(ratio: float, value: float) -> str:
        px = MARGIN + (1.0 - ratio) / max(1.0 - left, 1e-9) * (WIDTH - 2 * MARGIN - 140)
        py = HEIGHT - MARGIN - (value - low) / span * (HEIGHT - 2 * MARGIN)
        return f"{px:.1f},{py:.1f}"

    named = sorted(report.curves, key=lambda c: -c.sensitivity)[:LEGEND]
    parts = [_frame(report, ratios, low, high, at)]
    for curve in report.curves:
        colour = COLOURS[named.index(curve) % len(COLOURS)] if curve in named else "#bbbbbb"
        line = " ".join(at(r, v) for r, v in [(1.0, report.baseline)] + _xy(curve))
        title = _escape(f"{curve.kind} {curve.name}: mean drop {curve.sensitivity:.3g}")
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{_dashes(curve)} '
            f'points="{line}">'
            f"<title>{title}</title></polyline>"
        )
    for i, curve in enumerate(named):
        y = MARGIN + 14 * i
        colour = COLOURS[i % len(COLOURS)]
        parts.append(
            f'<text x="{WIDTH - 180}" y="{y}" font-size="10" fill="{colour}">'
            f"{_escape(f'{curve.kind} {curve.name}'[:30])}</text>"
        )
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">\n{body}\n</svg>\n'
    )


def _dashes(curve: Curve) -> str:
    """Ranks dashed, channel groups solid."""
    return ' stroke-dasharray="5 3"' if curve.kind == "rank" else ""


def _xy(curve: Curve) -> list[tuple[float, float]]:
    return [(p.ratio, p.score) for p in curve.points]


def _frame(report: SensitivityReport, ratios, low: float, high: float, at) -> str:
    bottom, top = at(1.0, low), at(1.0, high)
    x0, y0 = bottom.split(",")
    y1 = top.split(",")[1]
    x1 = at(min(ratios), low).split(",")[0]
    lines = [
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>',
        f'<text x="{x0}" y="{float(y1) - 10:.1f}" font-size="11">'
        f"{_escape(report.metric)} (baseline {report.baseline:.4g}) vs ratio kept</text>",
        f'<text x="4" y="{y0}" font-size="10">{low:.3g}</text>',
        f'<text x="4" y="{y1}" font-size="10">{high:.3g}</text>',
    ]
    for ratio in ratios:
        x = at(ratio, low).split(",")[0]
        lines.append(
            f'<text x="{x}" y="{float(y0) + 14:.1f}" font-size="10" '
            f'text-anchor="middle">{ratio:g}</text>'
        )
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
