"""The `compress` command line (typer): heavy libraries load only inside commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from compress import __version__

app = typer.Typer(
    name="compress",
    help="Compress text-to-image diffusion models: search, apply and review recipes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
recipe_app = typer.Typer(help="Validate and inspect recipe files.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")

# Piped or captured output reads one line per event: no wrapping at a guessed width, and tables
# as wide as their contents need (within 160 columns) instead of squeezed into 80.
_TTY = sys.stdout.isatty()
console = Console(soft_wrap=not _TTY, width=None if _TTY else 160)
err_console = Console(stderr=True, soft_wrap=True)
_state = {"verbose": False}


def _version(value: bool) -> None:
    if value:
        console.print(f"compress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show library output and full tracebacks.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    _state["verbose"] = verbose
    from compress._quiet import silence

    silence(verbose)


def heavy() -> None:
    """Import torch/diffusers quietly before a command needs them."""
    from compress._quiet import import_heavy

    import_heavy(_state["verbose"])


@app.command()
def apply(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML to apply.")],
    model: Annotated[str, typer.Option(help="Hub id, local pipeline folder, or 'miniature'.")],
    out: Annotated[Path, typer.Option(help="Folder to write the compressed pipeline to.")],
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    dtype: Annotated[str | None, typer.Option(help="float32, float16 or bfloat16.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out folder.")] = False,
    data: Annotated[
        Path | None,
        typer.Option(help="Training images with captions (<image>.txt or metadata.jsonl)."),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(help="Prompts file, one per line: calibration, or images the teacher draws."),
    ] = None,
    work_dir: Annotated[
        Path | None, typer.Option(help="Checkpoints of training transforms; rerun to resume.")
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(help="Share teacher-drawn training data in this folder (a search's cache)."),
    ] = None,
    lora: Annotated[
        Path | None,
        typer.Option(help="A LoRA (.safetensors) to fuse into the model before the transforms."),
    ] = None,
    lora_scale: Annotated[float, typer.Option(help="The fused LoRA's weight.")] = 1.0,
) -> None:
    """Apply RECIPE to a checkpoint and save the result as a loadable folder."""
    from compress.errors import CompressError
    from compress.models.loading import resolve
    from compress.recipe import load_recipe

    parsed = load_recipe(recipe)  # fail on bad input before the slow imports
    resolve(model)
    if data is not None and not data.is_dir():
        raise CompressError(f"--data {data} is not a folder of images with captions")
    if prompts is not None and not prompts.is_file():
        raise CompressError(f"--prompts {prompts} does not exist")
    if lora is not None and not lora.exists():
        raise CompressError(f"--lora {lora} does not exist; give a LoRA .safetensors file")
    lines = [p.strip() for p in prompts.read_text().splitlines()] if prompts else []
    rank = os.environ.get("LOCAL_RANK")  # under `accelerate launch`: one GPU per process
    if rank is not None and device == "cuda":
        device = f"cuda:{rank}"
    heavy()
    from compress.apply import apply_recipe
    from compress.artifact import save_artifact
    from compress.context import RunContext
    from compress.models.loading import load_pipeline

    with console.status(f"loading {model}"):
        pipe = load_pipeline(model, device=device, dtype=dtype)
    from compress.lora import fuse_lora, with_lora
    from compress.models.loading import weights_digest

    fused = None
    if lora is not None:
        with console.status(f"fusing {lora} into {model}"):
            fused = fuse_lora(pipe, lora, lora_scale)  # the transforms compress it with the model
    console.print(f"applying {parsed.name} ({len(parsed.transforms)} transforms)")

    ctx = RunContext(
        device=device,
        data=data,
        prompts=[p for p in lines if p],
        out_dir=work_dir,
        data_cache=cache / "data" if cache else None,
        teacher_digest=with_lora(weights_digest(model), fused) if cache else None,
    )
    applied = apply_recipe(pipe, parsed, ctx)  # training transforms show their own progress
    update = {"source_model": model, "fused_lora": fused}
    applied.provenance = applied.provenance.model_copy(update=update)
    if os.environ.get("RANK", "0") != "0":  # every process trained the same model; one writes
        return
    with console.status(f"saving to {out}"):
        save_artifact(pipe, applied, out, overwrite=overwrite)
    console.print(f"[green]wrote[/green] {out}")
    from compress.artifact import loading_notes
    from compress.generate import call_defaults

    for line in loading_notes(applied, out, call_defaults(pipe)):
        console.print(line, highlight=False)


@recipe_app.command("validate")
def recipe_validate(file: Annotated[Path, typer.Argument(help="Recipe YAML.")]) -> None:
    """Check a recipe: schema, known transform kinds, field types, stage order."""
    from compress.recipe import load_recipe

    r = load_recipe(file)
    console.print(f"[green]valid[/green] {file}: {r.name} ({len(r.transforms)} transforms)")


@recipe_app.command("list")
def recipe_list() -> None:
    """List the preset recipes shipped with the package (apply one by its name)."""
    from compress import shipped
    from compress.recipe import load_recipe

    for name in shipped.recipe_names():
        r = load_recipe(shipped.find("recipe", name))
        kinds = " + ".join(t.kind for t in r.transforms)
        console.print(f"{name}  [dim]{kinds}[/dim]  {r.description}", highlight=False)


@recipe_app.command("show")
def recipe_show(file: Annotated[Path, typer.Argument(help="Recipe YAML.")]) -> None:
    """Print a recipe's transforms, scores and provenance."""
    from rich.table import Table

    from compress.recipe import load_recipe
    from compress.transforms.base import spec_of

    r = load_recipe(file)
    console.print(f"[bold]{r.name}[/bold]  schema v{r.schema_version}  {r.description}")
    base = "any architecture" if r.base is None else r.base.describe()
    console.print(f"applies to: {base}")
    table = Table("#", "kind", "stage", "parameters")
    for i, t in enumerate(r.transforms):
        params = ", ".join(f"{k}={v}" for k, v in t.model_dump(exclude={"kind"}).items())
        table.add_row(str(i), t.kind, spec_of(t).stage.name, params)
    console.print(table)
    if r.scores is not None:
        s = r.scores
        console.print(
            f"scores: latency {s.latency_ms} ms, quality {s.quality} ({s.quality_metric} "
            f"v{s.quality_metric_version}) {s.settings}"
        )
    p = r.provenance
    console.print(
        f"provenance: created {p.created}, run {p.run_id}, trial {p.trial_id}, {p.versions}"
    )


# --- evaluation commands (bench, eval) ---

_Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")]
_DType = Annotated[str | None, typer.Option(help="float32, float16, bfloat16 (default: as is).")]
_Res = Annotated[int | None, typer.Option(help="Image side in pixels (default: the model's).")]
_Steps = Annotated[int | None, typer.Option(help="Denoising steps (default: the model's).")]
_Guid = Annotated[float | None, typer.Option(help="Guidance scale; <= 1 turns CFG off.")]
_Runs = Annotated[int, typer.Option(help="Timed runs (median and IQR are reported).")]
_Json = Annotated[Path | None, typer.Option("--json", help="Results JSON (default: reports/...).")]


@app.command()
def bench(
    model: Annotated[str | None, typer.Option(help="'miniature', a folder or a hub id.")] = None,
    arch: Annotated[
        str | None,
        typer.Option(help="sd15, sd21, sdxl, pixart-sigma, sd3-medium, sana-600m: random weights."),
    ] = None,
    device: _Device = "cpu",
    dtype: _DType = None,
    resolution: _Res = None,
    batch_size: Annotated[int, typer.Option(help="Images per call.")] = 1,
    steps: _Steps = None,
    guidance: _Guid = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile UNet and VAE.")] = False,
    runs: _Runs = 5,
    warmup: Annotated[int, typer.Option(help="Untimed runs first (compile happens here).")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's).")] = None,
    json_out: _Json = None,
) -> None:
    """Latency of a pipeline: end to end and per component, on the target device."""
    heavy()
    from compress.commands.evaluate import run_bench

    run_bench(
        console,
        model=model,
        arch=arch,
        json_out=json_out,
        device=device,
        dtype=dtype,
        resolution=resolution,
        batch_size=batch_size,
        steps=steps,
        guidance_scale=guidance,
        compile=compile,
        timed_runs=runs,
        warmup=warmup,
        threads=threads,
    )


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Option(help="'miniature', a pipeline folder or hub id.")],
    metric: Annotated[str, typer.Option(help="miniature, hpsv2, pickscore, clip, fidelity.")] = (
        "miniature"
    ),
    num_prompts: Annotated[int | None, typer.Option(help="First N prompts of the set.")] = None,
    weights: Annotated[str | None, typer.Option(help="Metric weights: file, folder or id.")] = None,
    prompts: Annotated[str | None, typer.Option(help="Metric prompts: file or folder.")] = None,
    reference: Annotated[str | None, typer.Option(help="Uncompressed model (fidelity).")] = None,
    device: _Device = "cpu",
    dtype: _DType = None,
    resolution: _Res = None,
    batch_size: Annotated[int, typer.Option(help="Images per call.")] = 1,
    steps: _Steps = None,
    guidance: _Guid = None,
    runs: _Runs = 5,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's).")] = None,
    seed: Annotated[int, typer.Option(help="Offset added to the metric's seeds.")] = 0,
    images: Annotated[Path | None, typer.Option(help="Folder to save the images in.")] = None,
    json_out: _Json = None,
) -> None:
    """Quality (a named, versioned metric) and latency of a pipeline."""
    heavy()
    from compress.commands.evaluate import run_eval

    run_eval(
        console,
        model=model,
        reference=reference,
        weights=weights,
        prompts=prompts,
        images_dir=images,
        json_out=json_out,
        metric=metric,
        num_prompts=num_prompts,
        device=device,
        dtype=dtype,
        resolution=resolution,
        batch_size=batch_size,
        steps=steps,
        guidance_scale=guidance,
        timed_runs=runs,
        threads=threads,
        seed=seed,
    )


# --- search commands (search, report) ---

_Opt = typer.Option


@app.command()
def search(
    model: Annotated[
        str | None, _Opt(help="'miniature', a folder or hub id (default: the space's).")
    ] = None,
    space: Annotated[
        str | None, _Opt(help="Space YAML or name: miniature (default), sd15, sdxl.")
    ] = None,
    metric: Annotated[str | None, _Opt(help="Quality metric (default: the space's).")] = None,
    metric_weights: Annotated[str | None, _Opt(help="The metric's weights file or folder.")] = None,
    metric_prompts: Annotated[str | None, _Opt(help="The metric's prompt file or folder.")] = None,
    trials: Annotated[int | None, _Opt(help="Trials in all (default: the space's).")] = None,
    ray_address: Annotated[
        str | None, _Opt(help="Join this Ray cluster (default: start one).")
    ] = None,
    gpus_per_trial: Annotated[float | None, _Opt(help="GPUs per trial (> 0 runs on cuda).")] = None,
    cpus_per_trial: Annotated[float | None, _Opt(help="CPUs per trial.")] = None,
    target_gpu: Annotated[
        str | None, _Opt(help="Run trials only on this GPU type, e.g. H100.")
    ] = None,
    max_latency: Annotated[
        float | None, _Opt(help="Slower candidates are infeasible (ms).")
    ] = None,
    min_quality: Annotated[float | None, _Opt(help="Worse candidates are infeasible.")] = None,
    max_memory: Annotated[
        float | None, _Opt(help="Candidates whose sampling peaks above this are infeasible (MiB).")
    ] = None,
    sampler: Annotated[str | None, _Opt(help="Optuna sampler: nsga2 or tpe.")] = None,
    max_concurrent: Annotated[int | None, _Opt(help="Trials running at once.")] = None,
    staged: Annotated[bool, _Opt(help="Score on a prompt subset first.")] = True,
    seed: Annotated[int | None, _Opt(help="Sampler seed.")] = None,
    out: Annotated[str | None, _Opt(help="Run folder (default: runs/<space>-<time>).")] = None,
    resume: Annotated[Path | None, _Opt(help="Continue the search in this run folder.")] = None,
    time_budget: Annotated[
        str | None, _Opt(help="Stop starting trials after this long (90s, 12m, 8h).")
    ] = None,
    cache: Annotated[
        str | None, _Opt(help="Prefix cache folder, shared by runs and nodes (default RUN/cache).")
    ] = None,
    data: Annotated[
        Path | None, _Opt(help="Training images with captions for every trial.")
    ] = None,
    prompts: Annotated[
        Path | None, _Opt(help="Prompts file (one per line) the teacher draws training images of.")
    ] = None,
    track: Annotated[
        list[str] | None,
        _Opt(
            metavar="<name>",
            help="Log trials to mlflow, tensorboard or wandb (repeat, or comma-separated).",
        ),
    ] = None,
    track_uri: Annotated[
        str | None, _Opt(help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else RUN/mlflow).")
    ] = None,
    dry_run: Annotated[
        bool, _Opt("--dry-run", help="Validate the space and show samples; load no model.")
    ] = False,
    list_spaces: Annotated[
        bool, _Opt("--list-spaces", help="List the shipped search spaces and exit.")
    ] = False,
    plan: Annotated[
        bool, _Opt("--plan", help="Print the space's costs on its device; train nothing.")
    ] = False,
) -> None:
    """Search compressions; write the Pareto front as recipes, a trials CSV and a report."""
    from compress.commands.search import dry_run_command, list_spaces_command

    if list_spaces:
        list_spaces_command(console)
        return
    if dry_run:
        dry_run_command(console, space or "miniature")
        return
    heavy()
    if plan:
        from compress.commands.search import plan_command

        given = {
            "model": model,
            "metric": metric,
            "target_gpu": target_gpu,
            "gpus_per_trial": gpus_per_trial,
            "cpus_per_trial": cpus_per_trial,
            "max_concurrent": max_concurrent,
            "time_budget": time_budget,
        }
        plan_command(console, space, **{k: v for k, v in given.items() if v is not None})
        return
    from compress.commands.search import search_command

    search_command(
        console,
        resume=resume,
        space=space,
        verbose=_state["verbose"],
        model=model,
        metric=metric,
        metric_weights=metric_weights,
        metric_prompts=metric_prompts,
        trials=trials,
        ray_address=ray_address,
        gpus_per_trial=gpus_per_trial,
        cpus_per_trial=cpus_per_trial,
        target_gpu=target_gpu,
        max_latency=max_latency,
        min_quality=min_quality,
        max_memory=max_memory,
        sampler=sampler,
        max_concurrent=max_concurrent,
        staged=None if staged else False,
        seed=seed,
        out=out,
        time_budget=time_budget,
        cache=cache,
        data=str(data) if data else None,
        prompts=str(prompts) if prompts else None,
        track=track or None,
        track_uri=track_uri,
    )


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A search run folder.")],
    trial: Annotated[str, typer.Argument(help="Trial number or front recipe name.")],
    out: Annotated[Path, _Opt(help="Folder to write the candidate to.")],
    overwrite: Annotated[bool, _Opt(help="Replace an existing --out folder.")] = False,
    check: Annotated[
        bool, _Opt(help="Regenerate the trial's scored images and compare them.")
    ] = True,
) -> None:
    """Write a trial's candidate from the run's prefix cache, without training it again."""
    heavy()
    from compress.artifact import loading_notes
    from compress.recipe import load_recipe
    from compress.search.export import export_trial, summary_lines

    with console.status(f"exporting trial {trial} of {run}"):
        done = export_trial(run, trial, out, overwrite=overwrite, check=check)
    console.print(f"[green]wrote[/green] {done.folder}")
    for line in summary_lines(done):
        console.print(line, highlight=False)
    recipe = load_recipe(done.folder / "recipe.yaml")
    for line in loading_notes(recipe, done.folder, done.call):
        console.print(line, highlight=False)
    if done.max_level_diff:
        raise typer.Exit(1)


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="An artifact folder (compress apply / export).")],
    repo: Annotated[str, typer.Argument(help="Hub model repository, OWNER/NAME.")],
    private: Annotated[bool, _Opt(help="Create the repository private.")] = False,
) -> None:
    """Upload an artifact, with its model card, to the Hugging Face Hub."""
    from compress.model_card import push as push_folder

    with console.status(f"pushing {folder} to {repo}"):
        url = push_folder(folder, repo, private=private)
    console.print(f"[green]pushed[/green] {folder} -> {url}")


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A search run folder.")],
    out: Annotated[Path | None, _Opt(help="HTML file (default: RUN/report.html).")] = None,
) -> None:
    """Render a search run as one self-contained HTML page (opens offline)."""
    from compress.report import write_report

    console.print(f"[green]wrote[/green] {write_report(run, out)}")


# --- compression analysis commands (sensitivity, ...) ---


@app.command()
def sensitivity(
    model: Annotated[str, typer.Option(help="'miniature', a pipeline folder or hub id.")],
    metric: Annotated[str, typer.Option(help="fidelity, miniature, hpsv2, pickscore, clip.")] = (
        "fidelity"
    ),
    formats: Annotated[str, typer.Option(help="Comma-separated quantization formats.")] = (
        "int8_dynamic,intx4_weight_only"
    ),
    out: Annotated[Path, typer.Option(help="Table to write (.csv or .json).")] = Path(
        "reports/sensitivity.csv"
    ),
    num_prompts: Annotated[int | None, typer.Option(help="First N prompts of the set.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the model's).")] = (
        None
    ),
    weights: Annotated[str | None, typer.Option(help="Metric weights: file, folder or id.")] = None,
    prompts: Annotated[str | None, typer.Option(help="Metric prompts: file or folder.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
) -> None:
    """Quantize one denoiser block at a time and measure the quality (or fidelity) drop."""
    heavy()
    from compress.commands.sensitivity import run_sensitivity

    run_sensitivity(
        console,
        model=model,
        metric=metric,
        formats=[f.strip() for f in formats.split(",") if f.strip()],
        out=out,
        weights=weights,
        prompts=prompts,
        num_prompts=num_prompts,
        steps=steps,
        device=device,
    )


def main() -> None:
    """Entry point: user errors print one line (full traceback with --verbose)."""
    from compress.errors import CompressError

    try:
        app(standalone_mode=False)
    except CompressError as exc:
        _fail(str(exc), exc)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))
    except typer.Abort:
        _fail("aborted", None)
    except Exception as exc:  # noqa: BLE001 - anything else still gets one clear line
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        _fail(f"{type(exc).__name__}: {exc}", exc)


def _fail(message: str, exc: BaseException | None) -> None:
    if _state["verbose"] and exc is not None:
        err_console.print_exception()
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    sys.exit(1)
