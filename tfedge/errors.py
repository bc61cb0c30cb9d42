"""Typed errors: everything a user can cause is a TfedgeError with a message and a hint.

Library code raises these; exactly one place (``tfedge.cli.main``) turns them into a
single ``Error: ...`` line and an exit code.
"""

from __future__ import annotations


class TfedgeError(Exception):
    """An error the user can act on.

    Args:
        message: what happened, naming the file, layer or value involved.
        hint: what to do about it.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class UsageError(TfedgeError):
    """Bad command-line usage: wrong combination of options."""

    exit_code = 2


class ModelLoadError(TfedgeError):
    """A model file is missing, truncated, of an unknown format or cannot be rebuilt."""


class DataError(TfedgeError):
    """A data file is missing, empty, malformed, or does not fit the model."""


class ConversionError(TfedgeError):
    """The TFLite converter failed or crashed."""


class VerificationError(TfedgeError):
    """A converted model is not what was asked for (e.g. float ops left in an int8 model)."""

    def __init__(self, message: str, hint: str = "", float_ops: list | None = None) -> None:
        super().__init__(message, hint)
        self.float_ops = float_ops or []


class OutputError(TfedgeError):
    """An output path cannot be written."""


class RecipeError(TfedgeError):
    """A recipe is invalid; raised before any training starts."""


class TrainingError(TfedgeError):
    """Training diverged (NaN loss) or a stage lost more accuracy than allowed."""


class ProfileError(TfedgeError):
    """A device profile is invalid, unknown, or a model breaks one of its budgets."""


class BenchError(TfedgeError):
    """A benchmark run failed on its target."""


class TargetError(TfedgeError):
    """A target (qemu root, SSH host) cannot be reached or set up."""


class OtaError(TfedgeError):
    """An over-the-air update step failed."""
