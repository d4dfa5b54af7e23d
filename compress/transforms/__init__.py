"""Built-in transforms; importing this package registers every one of them."""

from compress.transforms import distill  # noqa: F401
from compress.transforms import prune_blocks  # noqa: F401
from compress.transforms import prune_channels  # noqa: F401
from compress.transforms import quantize  # noqa: F401
from compress.transforms import sampler  # noqa: F401
from compress.transforms.base import (
    Metadata,
    Stage,
    TransformConfig,
    TransformSpec,
    register_transform,
    registry,
)

__all__ = [
    "Metadata",
    "Stage",
    "TransformConfig",
    "TransformSpec",
    "register_transform",
    "registry",
]
