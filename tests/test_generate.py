"""A pipeline with recorded call defaults samples with them in its own call; artifacts are loaded
and measured as they are meant to run."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from compress.cli import app
from compress.generate import call_defaults, set_call_defaults

RECIPE = """name: r
transforms:
  - {kind: sampler, scheduler: unipc, steps: 3, guidance_scale: 2.0}
"""


def _count_calls(pipe) -> list[int]:
    from compress.models.denoiser import denoiser

    calls = [0]
    denoiser(pipe).register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_the_pipelines_own_call_uses_recorded_defaults_and_the_caller_wins(tiny_pipe, tmp_path):
    cls = type(tiny_pipe)
    set_call_defaults(tiny_pipe, num_inference_steps=3, guidance_scale=1.0)
    assert call_defaults(tiny_pipe) == {"num_inference_steps": 3, "guidance_scale": 1.0}
    assert isinstance(tiny_pipe, cls) and type(tiny_pipe).__name__ == cls.__name__
    calls = _count_calls(tiny_pipe)
    tiny_pipe("a red digit", height=16, width=16)
    assert calls[0] == 3  # guidance 1: one call per step
    calls[0] = 0
    tiny_pipe("a red digit", num_inference_steps=2, height=16, width=16)
    assert calls[0] == 2
    calls[0] = 0
    tiny_pipe("a red digit", 16, 16, 4)  # positional steps are the caller's too
    assert calls[0] == 4
    tiny_pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_class_name"] == cls.__name__  # plain diffusers loads it as before


def test_an_artifact_is_loaded_called_and_measured_with_its_recipes_call(tiny_dir, tmp_path):
    import compress

    recipe, out = tmp_path / "r.yaml", tmp_path / "art"
    recipe.write_text(RECIPE)
    runner = CliRunner()
    done = runner.invoke(app, ["apply", str(recipe), "--model", str(tiny_dir), "--out", str(out)])
    assert done.exit_code == 0, done.output
    pipe = compress.load(str(out))
    calls = _count_calls(pipe)
    pipe("a red digit", height=16, width=16)
    assert calls[0] == 3  # the recipe's 3 steps (guided: one batched call per step), not 50
    bench = tmp_path / "bench.json"
    args = ["bench", "--model", str(out), "--runs", "1", "--warmup", "0", "--threads", "1"]
    done = runner.invoke(app, [*args, "--resolution", "16", "--json", str(bench)])
    assert done.exit_code == 0, done.output
    settings = json.loads(bench.read_text())["settings"]
    assert settings["steps"] == 3 and settings["guidance_scale"] == 2.0
    ev = tmp_path / "eval.json"
    args = ["eval", "--model", str(out), "--metric", "fidelity", "--reference", str(tiny_dir)]
    args += ["--num-prompts", "1", "--runs", "1", "--resolution", "16", "--threads", "1"]
    args += ["--json", str(ev)]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    settings = json.loads(ev.read_text())["settings"]
    assert settings["steps"] == 3 and settings["guidance_scale"] == 2.0
    assert Path(out / "recipe.yaml").is_file()
