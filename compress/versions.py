"""The library versions a result depends on: recorded in recipes' provenance and in the keys of
everything the search caches (trained prefixes, teacher-drawn data)."""

from __future__ import annotations

import contextlib

PACKAGES = ("compress", "torch", "diffusers", "transformers", "peft", "accelerate", "torchao")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out
