"""The `compress` command: exit codes, one-line errors, the apply round trip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

PRESET = Path("recipes/dpmsolver-fast.yaml")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**(os.environ if env is None else env), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "compress", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_version() -> None:
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("compress ")


def test_validate_ok_and_bad(tmp_path: Path) -> None:
    assert cli("recipe", "validate", str(PRESET)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntransforms:\n  - kind: sampler\n    steps: many\n")
    out = cli("recipe", "validate", str(bad))
    assert out.returncode == 1
    assert "transforms[0].steps" in out.stderr and "Traceback" not in out.stderr


def test_python_tag_rejected_by_cli(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bad = tmp_path / "evil.yaml"
    bad.write_text(f'!!python/object/apply:os.system ["touch {marker}"]\n')
    out = cli("recipe", "validate", str(bad))
    assert out.returncode == 1 and "python/object/apply" in out.stderr
    assert not marker.exists()


def test_show_lists_transforms() -> None:
    out = cli("recipe", "show", str(PRESET))
    assert out.returncode == 0 and "sampler" in out.stdout and "dpmsolver++" in out.stdout


def test_apply_then_plain_diffusers_and_compress_load_agree(tiny_dir: Path, tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    import compress
    from compress.generate import generate
    from compress.recipe import load_recipe

    out = tmp_path / "artifact"
    res = cli("apply", str(PRESET), "--model", str(tiny_dir), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", "library noise leaked into the terminal"
    sampler = load_recipe(PRESET).transforms[0]
    plain = DiffusionPipeline.from_pretrained(out)
    plain.set_progress_bar_config(disable=True)
    ours = compress.load(str(out))
    assert type(ours.scheduler).__name__ == type(plain.scheduler).__name__
    prompt = ["a blue digit nine"]
    a = generate(
        plain, prompt, [3], num_inference_steps=sampler.steps, guidance_scale=sampler.guidance_scale
    )
    b = generate(ours, prompt, [3])  # compress.load restores steps and guidance as defaults
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))

    again = cli("apply", str(PRESET), "--model", str(tiny_dir), "--out", str(out))
    assert again.returncode == 1 and "--overwrite" in again.stderr
    # what it said: plain diffusers needs the call arguments; compress.load sets them
    said = res.stdout.replace("\n", " ")
    call = f"guidance_scale={sampler.guidance_scale}, num_inference_steps={sampler.steps}"
    assert (
        f"compress.load('{out}') replays every transform; a plain call samples with {call}" in said
    )
    assert f"plain diffusers: DiffusionPipeline.from_pretrained('{out}')" in said
    assert f"pass {call}" in said


def test_the_apply_message_tells_per_transform_what_plain_diffusers_gives() -> None:
    from compress.artifact import loading_notes
    from compress.recipe import parse_recipe

    def notes(*kinds: str, call: dict | None = None) -> str:
        settings = {"prune_blocks": {"preset": "small"}}
        steps = [{"kind": k, **settings.get(k, {})} for k in kinds]
        recipe = parse_recipe({"name": "r", "transforms": steps})
        return " ".join(loading_notes(recipe, "out", call or {}))

    cached = notes("sampler", "cache", "compile", call={"num_inference_steps": 20})
    assert "pass num_inference_steps=20" in cached
    assert "cache: the pipeline runs without it, the whole denoiser at every step" in cached
    assert "compile: the pipeline runs uncompiled" in cached
    assert "cannot load" in notes("prune_channels", "sampler")
    assert "prune_channels" in notes("prune_channels") and "pass" not in notes("prune_channels")
    plain = notes("prune_blocks")
    assert "loads the weights and scheduler" in plain and "runs without" not in plain


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    out = cli("apply", str(PRESET), "--model", "/no/such/dir", "--out", str(tmp_path / "x"))
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error:")
    assert not (tmp_path / "x").exists()
    verbose = cli("--verbose", "apply", str(PRESET), "--model", "/no/such/dir", "--out", "x")
    assert "Traceback" in verbose.stderr


def test_shipped_spaces_and_recipes_from_any_folder_and_dry_run(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from compress.cli import app

    monkeypatch.chdir(tmp_path)  # not the repository: package data only
    runner = CliRunner()
    out = runner.invoke(app, ["search", "--space", "sd15", "--dry-run"])
    assert out.exit_code == 0, out.output
    for stage in ("structure", "training", "numeric", "runtime"):
        assert f"  {stage}: " in out.output
    assert "sample 2: " in out.output and "distill" in out.output
    listed = runner.invoke(app, ["search", "--list-spaces"]).output
    assert {"miniature", "miniature-sampler", "sd15", "sdxl"} <= {
        line.split()[0] for line in listed.splitlines() if line.strip()
    }
    assert "dpmsolver-fast" in runner.invoke(app, ["recipe", "list"]).output
    assert runner.invoke(app, ["recipe", "validate", "dpmsolver-fast"]).exit_code == 0
    missing = runner.invoke(app, ["search", "--space", "nope", "--dry-run"])
    assert missing.exit_code != 0 and "miniature-sampler" in str(missing.exception)


def test_an_artifact_carries_a_model_card_the_hub_parses(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    out = tmp_path / "art"
    res = cli("apply", str(PRESET), "--model", "miniature", "--out", str(out))
    assert res.returncode == 0, res.stderr
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "diffusers" and "compress" in card.data.tags
    assert "sampler" in card.data.tags  # the preset's transform kinds are tags
    assert "compress.load(" in card.text and "plain diffusers" in card.text
    assert "## Recipe" in card.text and "`sampler`" in card.text


def test_push_names_what_is_missing_and_an_unreachable_hub(tmp_path: Path) -> None:
    out = tmp_path / "art"
    assert cli("apply", str(PRESET), "--model", "miniature", "--out", str(out)).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = str(tmp_path / "hf")  # no stored token
    res = cli("push", str(out), "me/mini", env=env)
    assert res.returncode == 1 and "no Hugging Face token" in res.stderr
    res = cli("push", str(tmp_path), "me/mini", env=env)
    assert res.returncode == 1 and "not an artifact" in res.stderr
    offline = {**env, "HF_TOKEN": "hf_test", "HF_HUB_OFFLINE": "1"}
    res = cli("push", str(out), "me/mini", env=offline)
    assert res.returncode == 1 and "cannot reach the Hugging Face Hub" in res.stderr
    assert (out / "recipe.yaml").is_file()  # the artifact is untouched
