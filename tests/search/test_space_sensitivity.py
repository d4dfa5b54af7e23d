"""A sensitivity table narrows the block-group format knobs of a search space."""

from __future__ import annotations

import pytest

from compress.search.space import load_space
from compress.search.space_file import SpaceError
from compress.transforms.quantize.sensitivity import BASELINE, Row, write_table

SPACE = """
name: narrowed
transforms:
  quantize: {fixed: {rules: [{match: "re:.*", format: none}]}}
sensitivity: {table: sens.csv, max_drop: 0.01}
knobs:
  quant_down:
    sets: quantize.down_blocks
    type: categorical
    choices: [none, int8_dynamic, intx4_weight_only, int8_weight_only]
  quant_up:
    sets: quantize.up_blocks
    type: categorical
    choices: [int8_dynamic, intx4_weight_only]
"""


def row(block: str, fmt: str, drop: float) -> Row:
    return Row(
        block=block,
        format=fmt,
        layers=1,
        quality=1 - drop,
        drop=drop,
        metric="m",
        metric_version="1",
    )


def test_formats_that_cost_too_much_on_a_group_are_dropped(tmp_path) -> None:
    rows = [row(BASELINE, "full precision", 0.0)]
    rows += [row("down_blocks.0", "int8_dynamic", 0.001), row("down_blocks.1", "int8_dynamic", 0.0)]
    rows += [row("down_blocks.0", "intx4_weight_only", 0.002)]
    rows += [row("down_blocks.1", "intx4_weight_only", 0.05)]  # one block of the group too costly
    rows += [
        row("up_blocks.0", "int8_dynamic", 0.002),
        row("up_blocks.0", "intx4_weight_only", 0.3),
    ]
    write_table(rows, tmp_path / "sens.csv")
    (tmp_path / "space.yaml").write_text(SPACE)
    space = load_space(tmp_path / "space.yaml")
    # int8_weight_only was not measured: it stays; none always stays
    assert space.spec.knobs["quant_down"].choices == ["none", "int8_dynamic", "int8_weight_only"]
    assert space.spec.knobs["quant_up"].choices == ["int8_dynamic"]
    assert space.spec.sensitivity is None and "narrowed by sens.csv" in space.spec.description

    costly = [row("up_blocks.0", f, 0.5) for f in ("int8_dynamic", "intx4_weight_only")]
    write_table(costly, tmp_path / "sens.csv")
    with pytest.raises(SpaceError, match="'quant_up'.*raise max_drop"):
        load_space(tmp_path / "space.yaml")
    (tmp_path / "sens.csv").unlink()
    with pytest.raises(Exception, match="compress sensitivity"):
        load_space(tmp_path / "space.yaml")
