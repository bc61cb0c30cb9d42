"""``distill``: train a smaller student to match the teacher's softened outputs.

Loss: ``alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(teacher_T || student_T)``,
plus ``feature_weight * MSE`` between named intermediate layers (the student's features go
through a learned linear projection when their width differs). The teacher is the incoming
model (or ``teacher``); the student is a model file, a reference builder, or the teacher
shrunk by ``width``.

Example (recipe):
    passes:
      - distill: {width: 0.25, temperature: 4, alpha: 0.1, epochs: 20, compare_alone: true}
      - distill: {student: student.keras, features: [[fc1, fc1]]}
"""

from __future__ import annotations

import contextlib
import inspect as pyinspect
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from tfedge.config import did_you_mean
from tfedge.errors import RecipeError
from tfedge.passes.base import (
    OptionalRate,
    Pairs,
    PassConfig,
    PassResult,
    where_of,
)
from tfedge.passes.rebuild import from_config, model_config


class Distill(PassConfig):
    """Knowledge distillation into a student model.

    Args:
        student: a student model file (.keras/.h5), trained or not.
        builder: a reference-model builder for the student (``digits``, ``kws``, ``vww``,
            ``anomaly``).
        width: shrink the teacher (or the builder's model) by this multiplier; default 0.5.
        teacher: a teacher model file instead of the incoming model.
        alpha: weight of the label loss; ``1 - alpha`` goes to the soft-target loss.
        temperature: softmax temperature T for the soft targets.
        features: pairs ``[teacher_layer, student_layer]`` to match (MSE).
        feature_weight: weight of the feature loss.
        epochs: training epochs for the student.
        learning_rate: defaults to ``train.learning_rate``.
        compare_alone: also train the same student alone (same seed, epochs, optimizer) and
            report it.
    """

    pass_name: ClassVar[str] = "distill"
    guard_hint: ClassVar[str] = "add epochs, tune temperature and alpha, or use a wider student"

    student: str | None = None
    builder: str | None = None
    width: float | None = Field(default=None, gt=0, le=1)
    teacher: str | None = None
    alpha: float = Field(default=0.1, ge=0, le=1)
    temperature: float = Field(default=4.0, gt=0, le=100)
    features: Pairs = ()
    feature_weight: float = Field(default=1.0, ge=0, le=1e6)
    epochs: int = Field(default=10, ge=1, le=10000)
    learning_rate: OptionalRate = None
    compare_alone: bool = False

    @field_validator("builder")
    @classmethod
    def _known_builder(cls, value: str | None) -> str | None:
        known = sorted(_student_builders())
        if value is not None and value not in known:
            choices = ", ".join(known) or "none installed"
            hint = did_you_mean(value, known, "builders") if known else "install tfedge"
            raise ValueError(f"{value!r} is not one of {choices} (hint: {hint})")
        return value

    @model_validator(mode="after")
    def _one_student(self) -> Distill:
        if self.student is not None and (self.builder is not None or self.width is not None):
            raise ValueError(
                "a student file cannot be combined with builder or width (hint: give student, "
                "or builder (with an optional width), or width alone)"
            )
        return self

    def check(self, model, ctx) -> None:
        if not ctx.classification:
            raise RecipeError(
                f"{where_of(self)}: distillation needs class labels (integer y)",
                "use a classification data set, or drop the distill pass",
            )

    def apply(self, model, ctx) -> PassResult:
        teacher = self._teacher(model)
        self._check_layers(teacher, self.build_student(teacher, ctx, seed_offset=0))
        metrics = {"teacher_accuracy": ctx.accuracy(teacher)}
        if self.compare_alone:
            alone = self.build_student(teacher, ctx, seed_offset=0)
            ctx.compile(alone, learning_rate=self.learning_rate)
            ctx.seed_all(1)
            ctx.fit(alone, self.epochs, "distill: student alone")
            metrics["student_alone_accuracy"] = ctx.accuracy(alone)
        student = self.build_student(teacher, ctx, seed_offset=0)
        ctx.seed_all(1)
        self.train(teacher, student, ctx)
        metrics.update(
            student_accuracy=ctx.accuracy(student),
            student_params=int(student.count_params()),
            teacher_params=int(teacher.count_params()),
        )
        return PassResult(student, metrics)

    def build_student(self, teacher, ctx, seed_offset: int = 0):
        """The student, freshly initialised from the run's seed (same weights every call)."""
        from tfedge.io.models import load_tf_keras_model

        ctx.seed_all(seed_offset)
        if self.student is not None:
            return load_tf_keras_model(self.student)
        if self.builder is not None:
            return _build_reference(self.builder, self.width)
        return shrink(teacher, self.width or 0.5)

    def train(self, teacher, student, ctx) -> None:
        """Distil ``teacher`` into ``student`` in place."""
        from tfedge._tf import import_keras

        trainer = _make_trainer(teacher, student, self)
        optimizers = {"adam": "Adam", "sgd": "SGD", "rmsprop": "RMSprop"}
        optimizer = getattr(import_keras().optimizers, optimizers[ctx.train.optimizer])
        trainer.compile(
            optimizer=optimizer(learning_rate=self.learning_rate or ctx.train.learning_rate)
        )
        ctx.fit(trainer, self.epochs, "distill")

    def _teacher(self, model):
        from tfedge.io.models import load_tf_keras_model

        return load_tf_keras_model(self.teacher) if self.teacher else model

    def _check_layers(self, teacher, student) -> None:
        for t_name, s_name in self.features:
            for model, name, role in ((teacher, t_name, "teacher"), (student, s_name, "student")):
                if name not in {l.name for l in model.layers}:
                    raise RecipeError(
                        f"{where_of(self)}: the {role} has no layer '{name}'",
                        f"its layers: {', '.join(l.name for l in model.layers)}",
                    )
            t_shape, s_shape = (
                teacher.get_layer(t_name).output.shape,
                student.get_layer(s_name).output.shape,
            )
            if tuple(t_shape[:-1]) != tuple(s_shape[:-1]):
                raise RecipeError(
                    f"{where_of(self)}: features '{t_name}' {tuple(t_shape)} and '{s_name}' "
                    f"{tuple(s_shape)} differ in more than their last axis",
                    "pair layers whose outputs have the same spatial shape",
                )
        if teacher.outputs[0].shape[-1] != student.outputs[0].shape[-1]:
            raise RecipeError(
                f"{where_of(self)}: teacher and student have different numbers of classes",
                "the student must predict the same classes as the teacher",
            )


def shrink(teacher, width: float):
    """The teacher's architecture with every hidden layer's units/filters scaled by ``width``."""
    config = model_config(teacher)
    outputs = _output_width_layers(teacher)
    for entry in config["layers"]:
        options = entry["config"]
        if options["name"] in outputs:
            continue
        for key in ("units", "filters"):
            if key in options:
                options[key] = max(1, int(round(options[key] * width)))
    try:
        return from_config(teacher, config)
    except (ValueError, TypeError) as exc:
        raise RecipeError(
            f"cannot shrink '{teacher.name}' by width {width}: {str(exc).splitlines()[0]}",
            "give the student as a model file (student: small.keras)",
        ) from exc


def _output_width_layers(model) -> set[str]:
    """Names of the layers that fix the output width: the output layers and, through layers
    without units/filters after them (a final Softmax, Activation, Reshape...), the layers that
    set the class count."""
    keep, todo = set(), [model.get_layer(name) for name in model.output_names]
    while todo:
        layer = todo.pop()
        if layer.name in keep:
            continue
        keep.add(layer.name)
        config = layer.get_config()
        if "units" in config or "filters" in config or not layer.inbound_nodes:
            continue
        inbound = layer.inbound_nodes[0].inbound_layers
        todo.extend(inbound if isinstance(inbound, (list, tuple)) else [inbound])
    return keep


STUDENT_BUILDERS = (
    "tfedge.model_builders"  # entry-point group: name -> callable(width=...) -> model
)


def _build_reference(name: str, width: float | None):
    """A student from a model builder registered under the ``tfedge.model_builders`` entry points.

    The reference models register themselves there (``setup.cfg``), so the passes never import them.
    """
    entry = _student_builders().get(name)
    if entry is None:
        known = ", ".join(sorted(_student_builders())) or "none installed"
        raise RecipeError(f"pass 'distill': no model builder named {name!r}", f"builders: {known}")
    builder = entry.load()
    takes_width = "width" in pyinspect.signature(builder).parameters
    if width is not None and not takes_width:
        raise RecipeError(
            f"pass 'distill': the {name} builder has no width option",
            "drop width, or use width alone",
        )
    return builder(width) if width is not None else builder()


def _student_builders() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=STUDENT_BUILDERS)}


@contextlib.contextmanager
def _softmax_off(model, k):
    """While active, a final layer with ``activation=softmax`` (Dense, Conv, Activation) outputs
    its logits.

    Soft targets and the student's loss need the logits themselves: ``log`` of the softmax output
    underflows for confident classes (and clipping it distorts the soft targets and kills their
    gradient).
    A final ``Softmax`` layer is handled in ``outputs_of`` (its input is taken instead).
    """
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    if getattr(activation, "__name__", "") != "softmax":
        yield
        return
    last.activation = k.activations.linear
    try:
        yield
    finally:
        last.activation = activation


def _make_trainer(teacher, student, config: Distill):
    """A tf_keras Model whose train_step distils ``teacher`` into ``student``."""
    from tfedge._tf import import_keras, import_tf
    from tfedge.passes.base import ends_in_softmax

    tf, k = import_tf(), import_keras()
    T, alpha, pairs = float(config.temperature), float(config.alpha), config.features

    def outputs_of(model, names):
        """The model's logits (the input of a final Softmax layer) and the named layers' outputs."""
        last = model.layers[-1]
        head = (
            last.input
            if ends_in_softmax(model) and not hasattr(last, "activation")
            else model.outputs[0]
        )
        return k.Model(model.inputs, [head] + [model.get_layer(n).output for n in names])

    model_base: Any = k.Model  # a base class only known at run time

    class Distiller(model_base):
        def __init__(self):
            super().__init__()
            self.t_net = outputs_of(teacher, [t for t, _ in pairs])
            self.s_net = outputs_of(student, [s for _, s in pairs])
            self.proj = [
                k.layers.Dense(int(teacher.get_layer(t).output.shape[-1]), use_bias=False)
                for t, _ in pairs
            ]
            for proj, (_, s) in zip(self.proj, pairs):
                proj.build(student.get_layer(s).output.shape)
            self.ce = k.losses.SparseCategoricalCrossentropy(from_logits=True)
            self.acc = k.metrics.SparseCategoricalAccuracy(name="accuracy")
            self.loss_mean = k.metrics.Mean(name="loss")

        @property
        def metrics(self):
            return [self.loss_mean, self.acc]

        def call(self, x, training=False):
            return student(x, training=training)

        def _loss(self, x, y, training):
            with (
                _softmax_off(teacher, k),
                _softmax_off(student, k),
            ):  # pre-softmax logits, not log(probabilities)
                t_out = self.t_net(x, training=False)
                s_out = self.s_net(x, training=training)
            t_out, s_out = (
                (t_out if isinstance(t_out, list) else [t_out]),
                (s_out if isinstance(s_out, list) else [s_out]),
            )
            s_logits, t_logits = s_out[0], t_out[0]
            p_t = tf.nn.softmax(t_logits / T)
            kl = tf.reduce_mean(
                tf.reduce_sum(
                    p_t * (tf.nn.log_softmax(t_logits / T) - tf.nn.log_softmax(s_logits / T)),
                    axis=-1,
                )
            )
            loss = alpha * self.ce(y, s_logits) + (1.0 - alpha) * T * T * kl
            for proj, t_f, s_f in zip(self.proj, t_out[1:], s_out[1:]):
                loss += config.feature_weight * tf.reduce_mean(
                    tf.square(proj(s_f) - tf.stop_gradient(t_f))
                )
            return loss, s_logits

        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                loss, s_logits = self._loss(x, y, training=True)
            variables = student.trainable_variables + [
                v for p in self.proj for v in p.trainable_variables
            ]
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return self._update(loss, y, s_logits)

        def test_step(self, data):
            x, y = data
            loss, s_logits = self._loss(x, y, training=False)
            return self._update(loss, y, s_logits)

        def _update(self, loss, y, s_logits):
            self.loss_mean.update_state(loss)
            self.acc.update_state(y, s_logits)
            return {m.name: m.result() for m in self.metrics}

    return Distiller()
