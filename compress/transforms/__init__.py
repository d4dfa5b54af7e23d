"""Built-in transforms; importing this package registers every one of them."""

from compress.transforms import (
    cache,  # noqa: F401
    distill,  # noqa: F401
    distill_guidance,  # noqa: F401
    distill_steps,  # noqa: F401
    prune_blocks,  # noqa: F401
    prune_channels,  # noqa: F401
    qat,  # noqa: F401
    quantize,  # noqa: F401
    sampler,  # noqa: F401
)
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
