"""User-facing errors: each names what is wrong and what to do."""

from __future__ import annotations


class CompressError(Exception):
    """An error caused by input the user can fix; the CLI prints it as one line."""


class RecipeError(CompressError):
    """A recipe file or object is malformed."""


class FingerprintMismatch(CompressError):
    """A recipe is applied to a checkpoint of another architecture."""


class RestoreMismatch(CompressError):
    """Recorded transform metadata does not match what the model gives."""


class MissingExtra(CompressError):
    """An optional backend is not installed."""

    def __init__(self, package: str, extra: str | None = None) -> None:
        how = f"pip install 'compress[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{package} is not installed; install it with: {how}")
