"""Image grids as HTML, every PNG embedded as base64 so the page needs no other file."""

from __future__ import annotations

import base64
import html
from pathlib import Path

MAX_IMAGES = 8


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def numbered_pngs(folder: Path) -> list[Path]:
    """Full-evaluation images (00.png, 01.png, ...), not the stage-1 ones (s1_00.png)."""
    return sorted(p for p in folder.glob("[0-9]*.png"))[:MAX_IMAGES]


def grid(rows: list[tuple[str, list[Path]]], prompts: list[str]) -> str:
    """A table: one row per label (baseline, a recipe), one column per prompt."""
    if not any(images for _, images in rows):
        return "<p class='dim'>no images were kept for this trial</p>"
    width = max(len(images) for _, images in rows)
    head = "".join(
        f"<th title='{html.escape(p)}'>{html.escape(_short(p))}</th>"
        for p in (prompts + [""] * width)[:width]
    )
    body = []
    for label, images in rows:
        cells = "".join(
            f"<td><img src='{data_uri(p)}' alt='{html.escape(label)} {i}'></td>"
            for i, p in enumerate(images)
        )
        body.append(f"<tr><th class='label'>{html.escape(label)}</th>{cells}</tr>")
    return f"<table class='grid'><tr><th></th>{head}</tr>{''.join(body)}</table>"


def _short(prompt: str, n: int = 28) -> str:
    return prompt if len(prompt) <= n else prompt[: n - 1] + "…"
