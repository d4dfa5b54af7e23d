"""Keep third-party import noise out of the user's terminal unless --verbose."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator

_NOISY_LOGGERS = (
    "diffusers",
    "transformers",
    "torchao",
    "bitsandbytes",
    "neural_compressor",
    "torch._dynamo",
    "torch.utils._pytree",
    "accelerate",
    "ray",
    "optuna",
)


def silence(verbose: bool = False) -> None:
    """Quiet library loggers, warnings and progress bars for the whole process."""
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # --track mlflow: store set-up
    warnings.filterwarnings("ignore")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_imports(verbose: bool = False) -> Iterator[None]:
    """Swallow what libraries print while importing (optional-kernel load failures and the like).

    Some backends (bitsandbytes, torchao) print straight to stdout/stderr at import time instead of
    using logging, so redirecting the streams is the only way to keep a terminal clean.
    """
    if verbose:
        yield
        return
    out, err = io.StringIO(), io.StringIO()
    fd_null = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.dup2(fd_null, 1)
        os.dup2(fd_null, 2)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        os.close(fd_null)


def import_heavy(verbose: bool = False) -> None:
    """Import the deep-learning stack once, quietly, so later imports print nothing."""
    with quiet_imports(verbose):
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    silence(verbose)
    if not verbose:
        from diffusers.utils import logging as dlog

        dlog.disable_progress_bar()
