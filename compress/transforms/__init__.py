"""Built-in transforms, one folder per family: prune, distill, quantize, runtime. Importing this
package registers every one of them: each public module of a family's folder is imported, so a
new transform is one file in its family's folder (registered with `register_transform`); helpers
are private modules (`_student.py`), and modules keep heavy imports inside functions."""

import importlib
import pkgutil

from compress.transforms.base import (
    Metadata,
    Stage,
    TransformConfig,
    TransformSpec,
    register_transform,
    registry,
)

FAMILIES = ("prune", "distill", "quantize", "runtime")


def _register_builtins() -> None:
    # discovered rather than listed, so that adding a transform touches no other file
    for family in FAMILIES:
        package = importlib.import_module(f"{__name__}.{family}")
        for info in pkgutil.iter_modules(package.__path__):
            # a private module (_student.py) is a helper, imported by the transforms that need it
            if not info.ispkg and not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")


_register_builtins()

__all__ = [
    "FAMILIES",
    "Metadata",
    "Stage",
    "TransformConfig",
    "TransformSpec",
    "register_transform",
    "registry",
]
