"""The pass interface: a registry of named passes, the context they train in, what they return.

A pass is a ``PassConfig`` (a frozen pydantic model, ``tfedge.config``) of plain fields,
validated when built (``RecipeError`` with the key path and a hint), with one
``apply(model, ctx) -> PassResult``. It never changes its input model and
returns a plain tf_keras model (tfmot wrappers stripped), except ``qat``, whose result is
quantize-wrapped and goes straight to the converter.

Example:
    >>> from tfedge.passes import build_pass
    >>> build_pass("prune", {"target_sparsity": 0.75, "epochs": 2})
    Prune(target_sparsity=0.75, ...)
"""

from __future__ import annotations

import fnmatch
import json
import math
import sys
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import BeforeValidator, ConfigDict, Field, PrivateAttr, Strict, StrictStr

from tfedge.config import Config, validate
from tfedge.errors import RecipeError, TrainingError
from tfedge.io.data import Inputs, arrange_inputs, as_float32, keras_input_specs, num_samples

DEFAULT_GUARD_HINT = "add fine-tuning epochs or make the pass gentler"
P = TypeVar("P", bound="PassConfig")


class PassConfig(Config):
    """Base of every pass: its options are validated fields; ``where`` names it in messages.

    Options with a range or a set of values declare it on the field, so the recipe's JSON
    Schema (``tfedge recipes schema``) knows it too; rules across options are validators that
    raise ``ValueError("message (hint: ...)")``.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    pass_name: ClassVar[str] = ""
    guard_hint: ClassVar[str] = DEFAULT_GUARD_HINT
    _where: str = PrivateAttr("")

    @property
    def where(self) -> str:
        """``passes[0] prune`` in a recipe, ``pass 'prune'`` alone."""
        return self._where or f"pass '{self.pass_name}'"

    def check(self, model, ctx) -> None:
        """RecipeError if the pass cannot work on ``model``, before anything trains."""

    @abstractmethod
    def apply(self, model, ctx) -> PassResult:
        """The compressed model; ``model`` itself is left unchanged."""

    def to_dict(self) -> dict:
        """Every option, defaults included, as plain YAML/JSON values."""
        return self.model_dump(mode="json")

    def __eq__(self, other: object) -> bool:  # the options, not where the pass stands
        return (
            isinstance(other, PassConfig)
            and type(self) is type(other)
            and (self.to_dict() == other.to_dict())
        )

    def __hash__(self) -> int:
        return hash((type(self), json.dumps(self.to_dict(), sort_keys=True)))


def build_config(cls: type[P], options: dict | None, where: str) -> P:
    """``cls`` built from ``options``; a RecipeError names ``where`` and the option."""
    config = validate(cls, options, where)
    config._where = where
    return config


def where_of(config) -> str:
    return getattr(config, "where", type(config).__name__)


def _pairs(value: Any) -> Any:
    """``[[a, b], ...]`` stays as it is for the type check; any other shape is refused here."""
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 for p in value
    ):
        raise ValueError(
            f"must be a list of [teacher_layer, student_layer] pairs, got {value!r} "
            "(hint: e.g. features: [[fc1, fc1]])"
        )
    return value


# ``[[teacher_layer, student_layer], ...]`` (distill's features).
Pairs = Annotated[
    tuple[Annotated[tuple[StrictStr, StrictStr], Strict(False)], ...],
    Strict(False),
    BeforeValidator(_pairs),
]
# A learning rate that defaults to something derived from ``train.learning_rate``.
OptionalRate = Annotated[float | None, Field(gt=0, le=1)]


# ---- the accuracy guard -------------------------------------------------------------------


def guard_hint_of(p) -> str:
    """What to change in pass ``p`` when its stage loses more accuracy than the recipe allows.

    Each pass class says it in its ``guard_hint`` class variable (prune: lower
    target_sparsity; cluster: more clusters; ...); the pipeline adds ``max_accuracy_drop``
    and how to resume.
    """
    return str(getattr(p, "guard_hint", DEFAULT_GUARD_HINT))


# ---- training -----------------------------------------------------------------------------


class TrainConfig(Config):
    """The recipe's ``train:`` block: how every fine-tuning run trains."""

    model_config = ConfigDict(allow_inf_nan=False)

    optimizer: Literal["adam", "sgd", "rmsprop"] = Field(
        default="adam", description="optimizer of every fine-tuning run"
    )
    learning_rate: float = Field(
        default=1e-3, gt=0, le=1, description="learning rate (passes may default to a tenth)"
    )
    batch_size: int = Field(default=32, ge=1, le=1 << 16, description="samples per step")
    validation_split: float = Field(
        default=0.1, ge=0, le=0.9, description="share of the training data held out"
    )
    # after each pass that trains or replaces weights (not qat): re-estimate the moving
    # statistics of every BatchNormalization on the training data (passes/batchnorm.py)
    batchnorm: Literal["reestimate", "keep"] = Field(
        default="reestimate",
        description="after each pass but qat, re-estimate BatchNormalization statistics",
    )

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


@dataclass
class PassResult:
    """What a pass returns: the new model, its own metrics, and whether it is quantize-wrapped."""

    model: Any
    metrics: dict = field(default_factory=dict)
    quantize_wrapped: bool = False


@dataclass
class PassContext:
    """Training data and settings shared by the passes of one run.

    ``applied`` names the passes already run, so that e.g. ``cluster`` preserves sparsity
    after ``prune`` and ``qat`` picks the collaborative scheme. ``x`` and ``eval_x`` are an
    array, or for a model with several inputs a dict of arrays keyed by input name
    (``inputs_for`` orders them for a model).
    """

    x: Inputs
    y: np.ndarray
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    progress: bool = False
    applied: tuple[str, ...] = ()
    log: Callable[[str], None] | None = None
    eval_x: Inputs | None = None
    eval_y: np.ndarray | None = None

    @property
    def classification(self) -> bool:
        return np.issubdtype(np.asarray(self.y).dtype, np.integer)

    @property
    def steps_per_epoch(self) -> int:
        total = num_samples(self.x)
        n = total - int(total * self.train.validation_split)
        return max(1, math.ceil(n / self.train.batch_size))

    def seed_all(self, offset: int = 0) -> None:
        from tfedge._tf import import_keras

        import_keras().utils.set_random_seed(self.seed + offset)

    def compile(self, model, learning_rate: float | None = None) -> None:
        """Compile ``model`` with a fresh optimizer and the loss that fits the data."""
        from tfedge._tf import import_keras

        k = import_keras()
        optimizers = {
            "adam": k.optimizers.Adam,
            "sgd": k.optimizers.SGD,
            "rmsprop": k.optimizers.RMSprop,
        }
        optimizer = optimizers[self.train.optimizer](
            learning_rate=learning_rate or self.train.learning_rate
        )
        if self.classification:
            loss = k.losses.SparseCategoricalCrossentropy(from_logits=not ends_in_softmax(model))
            model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
        else:
            model.compile(optimizer=optimizer, loss=k.losses.MeanSquaredError())

    def fit(self, model, epochs: int, stage: str, callbacks: list | None = None):
        """Train ``model`` for ``epochs``; a NaN loss raises TrainingError naming ``stage``."""
        guard = NanGuard.make(stage)
        bars = [EpochBar.make(stage, self.steps_per_epoch)] if self.progress else []
        model.fit(
            self.inputs_for(model, self.x),
            self.y,
            epochs=epochs,
            batch_size=self.train.batch_size,
            validation_split=self.train.validation_split,
            shuffle=True,
            verbose=0,
            callbacks=[*(callbacks or []), guard, *bars],
        )
        guard.raise_if_nan()

    def accuracy(self, model) -> float | None:
        """Accuracy of a Keras ``model`` on the evaluation data.

        None without labels, or for regression.
        """
        if self.eval_x is None or self.eval_y is None or not self.classification:
            return None
        out = np.asarray(
            model.predict(
                self.inputs_for(model, as_float32(self.eval_x)), verbose=0, batch_size=256
            )
        )
        return float(
            np.mean(out.reshape(len(out), -1).argmax(1) == np.asarray(self.eval_y).reshape(-1))
        )

    @staticmethod
    def inputs_for(model, x: Inputs):
        """``x`` as ``model`` takes it: the array, or one array per input in the model's order.

        A model without symbolic inputs (a subclassed training wrapper such as distill's) gets
        the dict itself: the Functional models inside it take inputs by name.
        """
        if not isinstance(x, dict) or not getattr(model, "inputs", None):
            return x
        return arrange_inputs(x, keras_input_specs(model), "training data")

    def say(self, message: str) -> None:
        if self.log:
            self.log(message)


def ends_in_softmax(model) -> bool:
    last = model.layers[-1]
    last = getattr(last, "layer", last)  # a tfmot wrapper
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") == "softmax" or type(last).__name__ == "Softmax"


class NanGuard:
    """A Keras callback that stops training at the first NaN or infinite loss."""

    @staticmethod
    def make(stage: str):
        from tfedge._tf import import_keras

        callback: Any = import_keras().callbacks.Callback  # a base class only known at run time

        class _Guard(callback):
            def __init__(self):
                super().__init__()
                self.bad_epoch = None

            def on_train_batch_end(self, batch, logs=None):
                loss = (logs or {}).get("loss")
                if loss is not None and not math.isfinite(float(loss)):
                    self.bad_epoch = self.bad_epoch or (self._epoch + 1)
                    self.model.stop_training = True

            def on_epoch_begin(self, epoch, logs=None):
                self._epoch = epoch

            def raise_if_nan(self):
                if self.bad_epoch is not None:
                    raise TrainingError(
                        f"stage '{stage}': the training loss became NaN in epoch {self.bad_epoch}",
                        "lower train.learning_rate in the recipe (e.g. 1e-4) or check the data",
                    )

        return _Guard()


class EpochBar:
    """A Keras callback drawing one progress bar per epoch on stderr."""

    @staticmethod
    def make(stage: str, steps: int):
        import click

        from tfedge._tf import import_keras

        callback: Any = import_keras().callbacks.Callback  # a base class only known at run time

        class _Bar(callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.bar = click.progressbar(
                    length=steps, label=f"  {stage} epoch {epoch + 1}", file=sys.stderr
                )
                self.bar.__enter__()

            def on_train_batch_end(self, batch, logs=None):
                self.bar.update(1)

            def on_epoch_end(self, epoch, logs=None):
                self.bar.__exit__(None, None, None)

        return _Bar()


# ---- models -------------------------------------------------------------------------------


def clone_with_weights(model):
    """A copy of ``model`` with its own weights, so training it leaves ``model`` untouched."""
    from tfedge._tf import import_keras

    copy = import_keras().models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def select_layers(
    model, patterns: tuple[str, ...], types: tuple[str, ...], eligible: Callable
) -> list[str]:
    """Names of the layers matching ``patterns``/``types`` that ``eligible`` accepts.

    All layers match when both are empty.
    """
    chosen = []
    for layer in model.layers:
        by_name = not patterns or any(fnmatch.fnmatchcase(layer.name, p) for p in patterns)
        by_type = not types or type(layer).__name__ in types
        if by_name and by_type and eligible(layer):
            chosen.append(layer.name)
    return chosen


def check_selection(config, model, chosen: list[str], what: str) -> None:
    if not chosen:
        raise RecipeError(
            f"{where_of(config)}: no layer of the model can be {what} with this selection",
            f"check `layers`/`layer_types` against `tfedge inspect MODEL.keras` "
            f"(layers: {', '.join(l.name for l in model.layers)})",
        )


def kernel_of(layer):
    """The main weight tensor of a layer (kernel, depthwise kernel or embeddings), or None."""
    for attr in ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings"):
        weight = getattr(layer, attr, None)
        if weight is not None:
            return weight
    return None


def import_tfmot():
    from tfedge._tf import import_tf

    import_tf()
    import tensorflow_model_optimization as tfmot

    from tfedge.passes import cluster_lookup

    cluster_lookup.install()
    return tfmot
