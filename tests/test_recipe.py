"""Recipe schema: validation messages, YAML safety, stage order, round-trips."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from compress.errors import RecipeError
from compress.recipe import Recipe, load_recipe, parse_recipe, save_recipe
from compress.transforms import base
from compress.transforms.base import Stage, TransformConfig, register_transform
from compress.transforms.runtime.sampler import SamplerConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_shipped_presets_validate() -> None:
    presets = sorted(Path("recipes").glob("*.yaml"))
    assert presets, "no preset recipes shipped"
    for path in presets:
        assert load_recipe(path).transforms


def test_unknown_kind_names_allowed_kinds(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ntransforms:\n  - kind: prune_everything\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert "transforms[0]" in msg and "prune_everything" in msg and "'sampler'" in msg


def test_wrong_type_names_field_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ntransforms:\n  - kind: sampler\n    steps: many\n")
    with pytest.raises(RecipeError, match=r"transforms\[0\]\.steps: .*integer.*'many'"):
        load_recipe(path)


def test_typo_is_an_error_not_a_default(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ntransforms:\n  - kind: sampler\n    stepz: 4\n")
    with pytest.raises(RecipeError, match=r"transforms\[0\]\.stepz: Extra inputs"):
        load_recipe(path)


def test_out_of_range_value(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ntransforms:\n  - kind: sampler\n    steps: 0\n")
    with pytest.raises(RecipeError, match=r"steps: .*greater than or equal to 1"):
        load_recipe(path)


def test_python_tag_is_rejected_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = write(tmp_path, f'!!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(RecipeError, match="python/object/apply"):
        load_recipe(path)
    assert not marker.exists()


def test_schema_version_is_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "schema_version: 99\nname: x\ntransforms:\n  - kind: sampler\n")
    with pytest.raises(RecipeError, match="schema_version"):
        load_recipe(path)


def test_top_level_must_be_mapping() -> None:
    with pytest.raises(RecipeError, match="mapping"):
        parse_recipe(["kind", "sampler"])


class _FakeStructure(TransformConfig):
    kind: Literal["fake_structure"] = "fake_structure"


@pytest.fixture
def structure_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A throwaway structure-stage transform, removed again after the test."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base.registry()))
    monkeypatch.setattr(base, "_ADAPTER", None)
    register_transform(_FakeStructure, stage=Stage.structure)(lambda pipe, cfg, ctx: {})
    yield
    monkeypatch.setattr(base, "_ADAPTER", None)


def test_stage_out_of_order_names_the_order(structure_kind: None) -> None:
    data = {"name": "x", "transforms": [{"kind": "sampler"}, {"kind": "fake_structure"}]}
    with pytest.raises(RecipeError, match="structure -> training -> numeric -> runtime"):
        parse_recipe(data)
    ok = parse_recipe({"name": "x", "transforms": data["transforms"][::-1]})
    assert [t.kind for t in ok.transforms] == ["fake_structure", "sampler"]


def test_records_must_match_transforms() -> None:
    with pytest.raises(RecipeError, match="records"):
        parse_recipe(
            {
                "name": "x",
                "transforms": [{"kind": "sampler"}],
                "records": [{"kind": "other", "metadata": {}}],
            }
        )


def test_yaml_round_trip_is_identical(tmp_path: Path) -> None:
    recipe = Recipe(
        name="rt",
        transforms=[SamplerConfig(scheduler="euler", steps=7, guidance_scale=3.0)],
        scores={"latency_ms": 12.5, "quality": 0.8, "quality_metric": "fidelity-psnr"},
    )
    save_recipe(recipe, tmp_path / "rt.yaml")
    again = load_recipe(tmp_path / "rt.yaml")
    assert again == recipe
    assert isinstance(again.transforms[0], SamplerConfig)


def test_configs_are_frozen() -> None:
    cfg = SamplerConfig()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own frozen error
        cfg.steps = 3  # type: ignore[misc]
