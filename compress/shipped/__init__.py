"""The search spaces and preset recipes shipped with the package.

They are edited in the repository's `search_spaces/` and `recipes/` folders; `search_spaces` and
`recipes` here link to them, so a wheel carries them as package data and an installed
`compress` finds them by name from any folder.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SPACES_DIR = HERE / "search_spaces"
RECIPES_DIR = HERE / "recipes"


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def space_names() -> list[str]:
    return _names(SPACES_DIR)


def recipe_names() -> list[str]:
    return _names(RECIPES_DIR)


def find(kind: str, name: str) -> Path | None:
    """A shipped space (`kind` "space") or recipe ("recipe") by name, or None."""
    folder = SPACES_DIR if kind == "space" else RECIPES_DIR
    path = folder / f"{name}.yaml"
    return path if path.is_file() else None
