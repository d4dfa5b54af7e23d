"""Search spaces: YAML -> define-by-run, replayed with optuna's FixedTrial (no study)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import FixedTrial

from compress.recipe import parse_recipe
from compress.search.space import SpaceError, load_space, parse_space

BASE = {
    "name": "t",
    "knobs": {
        "scheduler": {
            "sets": "sampler.scheduler",
            "type": "categorical",
            "choices": ["euler", "ddim"],
        },
        "karras": {
            "sets": "sampler.karras_sigmas",
            "type": "categorical",
            "choices": [False, True],
            "when": {"scheduler": "euler"},
        },
        "steps": {"sets": "sampler.steps", "type": "int", "low": 2, "high": 32, "log": True},
        "guidance": {"sets": "sampler.guidance_scale", "type": "float", "low": 1.0, "high": 8.0},
    },
}


def _space(**changes):
    knobs = {**BASE["knobs"], **changes.pop("knobs", {})}
    return parse_space({**BASE, **changes, "knobs": knobs}, "test.yaml")


def test_fixed_trial_builds_the_recipe():
    space = _space()
    recipe = space.suggest(
        FixedTrial({"scheduler": "euler", "karras": True, "steps": 4, "guidance": 1.0}, number=7)
    )
    assert recipe.name == "t-t0007"
    [sampler] = recipe.transforms
    assert (sampler.scheduler, sampler.karras_sigmas, sampler.steps, sampler.guidance_scale) == (
        "euler",
        True,
        4,
        1.0,
    )
    # The recipe round-trips through its YAML form.
    assert parse_recipe(__import__("yaml").safe_load(recipe.to_yaml())) == recipe


def test_when_skips_inactive_knobs():
    space = _space()
    fixed = FixedTrial({"scheduler": "ddim", "steps": 8, "guidance": 3.0})
    recipe = space.suggest(fixed)
    assert "karras" not in fixed.params  # never asked: its condition does not hold
    assert recipe.transforms[0].karras_sigmas is False  # the config's default
    with pytest.raises(ValueError, match="karras"):  # asked when the condition holds
        space.suggest(FixedTrial({"scheduler": "euler", "steps": 8, "guidance": 3.0}))


def test_study_samples_respect_domains_and_conditions():
    space = _space()
    study = optuna.create_study(
        directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    for _ in range(20):
        trial = study.ask()
        recipe = space.suggest(trial)
        s = recipe.transforms[0]
        assert 2 <= s.steps <= 32 and 1.0 <= s.guidance_scale <= 8.0
        assert ("karras" in trial.params) == (s.scheduler == "euler")
        study.tell(trial, [s.steps, s.guidance_scale])
    dist = study.trials[0].distributions
    assert dist["steps"].log and isinstance(
        dist["guidance"], optuna.distributions.FloatDistribution
    )


def test_values_map_labels_to_field_values_and_transform_when():
    space = _space(
        knobs={
            "scheduler": {
                "sets": "sampler.scheduler",
                "type": "categorical",
                "choices": ["fast", "careful"],
                "values": {"fast": "euler", "careful": "heun"},
            },
            "karras": {
                "sets": "sampler.karras_sigmas",
                "type": "categorical",
                "choices": [False, True],
                "when": {"scheduler": "fast"},
            },
        }
    )
    recipe = space.suggest(FixedTrial({"scheduler": "careful", "steps": 3, "guidance": 2.0}))
    assert recipe.transforms[0].scheduler == "heun"


def test_grid_enumerates_valid_assignments():
    space = _space(
        knobs={
            "steps": {"sets": "sampler.steps", "type": "int", "low": 2, "high": 8, "step": 2},
            "guidance": {
                "sets": "sampler.guidance_scale",
                "type": "float",
                "low": 1.0,
                "high": 2.0,
                "step": 0.5,
            },
        }
    )
    grid = space.grid()
    # scheduler (euler: karras x2, ddim: x1) x 4 steps x 3 guidance
    assert len(grid) == 3 * 4 * 3 == space.size()
    assert {"scheduler": "ddim", "steps": 8, "guidance": 2.0} in grid
    for point in grid:
        space.suggest(FixedTrial(point))  # every point replays without a missing knob
    with pytest.raises(SpaceError, match="'guidance'.*continuous"):
        _space().grid()


@pytest.mark.parametrize("name", ["miniature", "miniature-dit", "sd15", "sdxl"])
def test_shipped_spaces_load_and_build_recipes(name):
    space = load_space(name)
    study = optuna.create_study(
        directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=1)
    )
    for _ in range(5):
        trial = study.ask()
        assert space.suggest(trial).transforms
        study.tell(trial, [1.0, 1.0])
    assert space.spec.search.trials >= 1


@pytest.mark.parametrize(
    ("knob", "spec", "message"),
    [
        (
            "bad",
            {"sets": "prune_everything.ratio", "type": "float", "low": 0, "high": 1},
            r"knob 'bad'.*prune_everything.*not registered.*sampler",
        ),
        (
            "bad",
            {"sets": "sampler.stepz", "type": "int", "low": 1, "high": 4},
            r"knob 'bad'.*no field 'stepz'.*steps",
        ),
        (
            "bad",
            {"sets": "sampler.scheduler", "type": "categorical", "choices": ["warp"]},
            r"knob 'bad'.*invalid sampler config",
        ),
        (
            "bad",
            {"sets": "sampler.steps", "type": "int", "low": 0, "high": 4},
            r"knob 'bad'.*invalid sampler config.*steps",
        ),
        (
            "bad",
            {"sets": "sampler.steps", "type": "int", "low": 1.5, "high": 4},
            r"knob 'bad'.*whole-number",
        ),
        (
            "bad",
            {"sets": "sampler.steps", "type": "int", "low": 8, "high": 4},
            r"knob 'bad'.*above high",
        ),
        (
            "bad",
            {"sets": "sampler.steps", "type": "int", "low": 1, "high": 4, "log": True, "step": 1},
            r"knob 'bad'.*log-scale",
        ),
        ("bad", {"sets": "sampler.steps", "type": "int"}, r"knob 'bad'.*needs `low:` and `high:`"),
        (
            "bad",
            {
                "sets": "sampler.scheduler",
                "type": "categorical",
                "choices": ["a"],
                "values": {"b": "euler"},
            },
            r"knob 'bad'.*no entry under `values:`",
        ),
        (
            "bad",
            {"type": "categorical", "choices": [1], "when": {"later": 1}},
            r"knob 'bad'.*refers to 'later'",
        ),
        (
            "bad",
            {"type": "categorical", "choices": [1], "when": {"scheduler": "heun"}},
            r"knob 'bad'.*scheduler='heun'",
        ),
        ("bad-name", {"type": "categorical", "choices": [1]}, r"knob 'bad-name'.*identifiers"),
    ],
)
def test_malformed_space_names_the_knob(knob, spec, message):
    with pytest.raises(SpaceError, match=message):
        _space(knobs={knob: spec})


def test_malformed_structure_is_a_clear_error(tmp_path):
    with pytest.raises(SpaceError, match=r"knobs.steps.typo: Extra inputs"):
        _space(
            knobs={
                "steps": {"sets": "sampler.steps", "type": "int", "low": 1, "high": 2, "typo": 1}
            }
        )
    with pytest.raises(SpaceError, match="transform 'quantise' is not registered"):
        _space(transforms={"quantise": {}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(bad)
    with pytest.raises(SpaceError, match="not found.*miniature"):
        load_space("no-such-space")


def test_start_points_are_validated_and_not_rerun_on_resume():
    from compress.search.ledger import TrialRecord
    from compress.search.runner import start_points

    good = {"scheduler": "euler", "karras": True, "steps": 4, "guidance": 3.0}
    space = _space(search={"start": [good, {"scheduler": "ddim", "steps": 8, "guidance": 1.0}]})
    assert len(start_points(space, [])) == 2
    ran = TrialRecord(number=0, state="complete", params=good)
    assert start_points(space, [ran]) == [{"scheduler": "ddim", "steps": 8, "guidance": 1.0}]
    cut = TrialRecord(number=0, state="interrupted", params=good)
    assert len(start_points(space, [cut])) == 2  # an interrupted start point runs again
    bad = {
        "names unknown knobs \\['sched'\\]": {**good, "sched": "euler"},
        "steps=64 is outside": {**good, "steps": 64},
        "scheduler='lms' is outside": {**good, "scheduler": "lms"},
        "'guidance' is not found": {"scheduler": "ddim", "steps": 8},
        "sets \\['karras'\\], inactive": {"scheduler": "ddim", "karras": True, "steps": 8,
                                          "guidance": 1.0},
    }  # fmt: skip
    for message, point in bad.items():
        with pytest.raises(SpaceError, match=f"search.start\\[0\\].*{message}"):
            _space(search={"start": [point]})


def test_the_joint_space_starts_from_each_stage_alone():
    space = load_space("miniature")
    stages = [
        {t.kind for t in space.suggest(FixedTrial(p, number=0)).transforms}
        for p in space.spec.search.start
    ]
    assert {"distill_steps"} in stages and {"sampler"} in stages
    assert all(len(s - {"sampler", "distill"}) <= 1 for s in stages)  # one technique each
    assert space.spec.search.compose
