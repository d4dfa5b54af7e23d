"""Narrow a space's block-group format knobs with a `compress sensitivity` table: a format stays
for a group only if quantizing each block of the group to it alone cost at most `max_drop`."""

from __future__ import annotations

from pathlib import Path

from compress.search.space_file import SpaceError, SpaceFile

GROUPS = ("down_blocks", "mid_block", "up_blocks")  # QuantizeConfig's block-group fields


def narrow(spec: SpaceFile, source: str) -> SpaceFile:
    """The space with disallowed formats removed from knobs setting `quantize.<group>`."""
    from compress.transforms.quantize.sensitivity import BASELINE, allowed_formats, read_table

    if spec.sensitivity is None:
        return spec
    path = Path(spec.sensitivity.table)
    if not path.is_absolute():
        path = Path(source).parent / path
    rows = read_table(path)
    allowed = allowed_formats(rows, spec.sensitivity.max_drop)
    measured = {r.format for r in rows if r.block != BASELINE}
    knobs = dict(spec.knobs)
    for name, knob in spec.knobs.items():
        kind, _, group = (knob.sets or "").partition(".")
        if kind != "quantize" or group not in GROUPS or not knob.choices:
            continue
        blocks = [b for b in allowed if b == group or b.startswith(group + ".")]

        def ok(fmt: str, blocks: list[str] = blocks) -> bool:
            return fmt == "none" or fmt not in measured or all(fmt in allowed[b] for b in blocks)

        choices = [c for c in knob.choices if ok(c)]
        if not choices:
            raise SpaceError(
                f"search space {source}: knob {name!r}: every format of {knob.choices} costs "
                f"more than max_drop {spec.sensitivity.max_drop} on {group} in {path}; "
                "raise max_drop or add 'none' to its choices"
            )
        knobs[name] = knob.model_copy(update={"choices": choices})
    note = f" (formats narrowed by {path.name}, max drop {spec.sensitivity.max_drop})"
    return spec.model_copy(
        update={"knobs": knobs, "sensitivity": None, "description": spec.description + note}
    )
