"""`compress search --plan`: what a space will cost on its target device before anything trains.

Work is counted in FLOPs on the real architecture (compress.evaluate.flops: the model built from
its configs on the meta device, no weight read) and turned into seconds by a device throughput:
on a GPU type, NVIDIA's dense BF16 peak times a stated utilisation; on this machine's CPUs, one
measured call of the denoiser (forward, and forward + backward), text encoder and VAE decoder.

`CostModel` prices one candidate: a training step is the student's forward and backward (3
forwards, on the pruned student where a structure transform came first) plus the teacher's
forwards its loss needs; an evaluation is the paired timing rounds (candidate and baseline) and
the scored images, at the candidate's own call (steps, guidance, DeepCache's full steps).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.evaluate.settings import EvalSettings

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from compress.evaluate.flops import Costs
    from compress.recipe import Recipe
    from compress.search.config import SearchConfig
    from compress.search.space import SearchSpace

GIB = 2**30


@dataclass(frozen=True)
class Device:
    name: str
    memory: float  # bytes
    # FLOP/s of each kind of work: denoiser (inference), train (forward + backward), text, decode
    rates: dict[str, float]
    source: str


# Dense BF16 peaks (NVIDIA data sheets, SXM parts) and the share of them each kind of work
# reaches: a stated assumption, not a measurement. Sampling at batch 2 is bound by memory
# traffic and kernel launches (SD1.5's 25-step 512 px call in about 0.6 s on an H100 in half
# precision is some 7% of the peak, SDXL's at 1024 px some 13%); training at batch 16-64 keeps
# the tensor cores busier; text encoders and VAE decoders reach less.
GPUS = {"H100": (989e12, 80), "H200": (989e12, 141), "A100": (312e12, 80), "L40S": (362e12, 48)}
UTILISATION = {"denoiser": 0.10, "train": 0.30, "text": 0.05, "decode": 0.10}
TRIAL_OVERHEAD_S = 5.0  # a trial's start on its worker and its model load
SHALLOW = 0.35  # FLOPs of a DeepCache shallow step relative to a full one (branch 0-2)
# torch.compile's one-off cost per trial that compiles: measured 49 s for the miniature's UNet
# and VAE on these CPUs; SD-size graphs on a GPU take one to two minutes (stated)
COMPILE_S = {"cpu": 50.0, "gpu": 90.0}
# A quantized call on a CPU is slower, not faster, for models this small: latency of the
# miniature with every Linear quantized over its float32 latency (reports/quantization.md);
# on a GPU the plan prices a quantized call as a float one (an upper bound for float8/int8).
CPU_FORMAT_FACTOR = {"int8_weight_only": 1.41, "int8_dynamic": 2.79, "intx4_weight_only": 1.55}
# teacher forwards per training sample besides the student's forward and backward
TEACHER_CALLS = {"distill": 1, "qat": 1, "distill_guidance": 2, "consistency": 3}


def gpu(name: str) -> Device:
    if name not in GPUS:
        raise CompressError(f"--target-gpu {name}: the plan knows {', '.join(GPUS)}")
    peak, memory = GPUS[name]
    rates = {k: peak * u for k, u in UTILISATION.items()}
    source = f"stated: {peak / 1e12:.0f} TFLOPS BF16 peak x utilisation {UTILISATION}"
    return Device(name, memory * GIB, rates, source)


def measured_cpu(pipe: DiffusionPipeline, costs: Costs, threads: int, batches: list[int]) -> Device:
    """This machine's CPU rates, each from timing real calls of the component (random weights:
    the time does not depend on their values); training at each of the space's batch sizes
    (`train@B`), since a CPU's throughput grows with the batch (the miniature's UNet: 2.3x from
    batch 16 to 32)."""
    import psutil
    import torch
    from accelerate.utils import set_module_tensor_to_device

    from compress.evaluate.flops import _batched, _denoiser_inputs, _encode, _text_inputs
    from compress.models.denoiser import denoiser

    for module in pipe.components.values():
        if not isinstance(module, torch.nn.Module):
            continue
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.device.type == "meta":  # built without weights: small random ones
                value = torch.randn(tensor.shape) * 0.02 if tensor.is_floating_point() else None
                value = (
                    value if value is not None else torch.zeros(tensor.shape, dtype=tensor.dtype)
                )
                set_module_tensor_to_device(module, name, "cpu", value=value)
        module.float()
    net = denoiser(pipe)
    rates: dict[str, float] = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            text = _text_inputs(pipe, "cpu")
            rates["text"] = costs.text_flops / _best(lambda: _encode(pipe, text))
            one = _denoiser_inputs(
                pipe, _encode(pipe, text), costs.latent_shape, "cpu", torch.float32
            )
            two = _batched(one, 2)
            rates["denoiser"] = 2 * costs.denoiser_flops / _best(lambda: net(**two))
            z = torch.zeros(1, *costs.latent_shape)
            rates["decode"] = costs.decode_flops / _best(lambda: pipe.vae.decode(z))
        net.requires_grad_(True)
        for batch in sorted(set(batches)):
            many = _batched(one, batch)
            seconds = _best(lambda many=many: net(**many)[0].float().mean().backward())
            rates[f"train@{batch}"] = 3 * batch * costs.denoiser_flops / seconds
        rates["train"] = rates[f"train@{max(batches)}"]
        net.requires_grad_(False)
    finally:
        torch.set_num_threads(previous)
    source = "measured: the best of 7 calls of each component"
    return Device(f"CPU, {threads} thread(s)", psutil.virtual_memory().total, rates, source)


def _best(fn: Any, repeats: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


class CostModel:
    """Seconds, bytes and FLOPs of candidates of one model on one device."""

    def __init__(
        self,
        pipe: DiffusionPipeline,
        costs: Costs,
        device: Device,
        settings: EvalSettings,
        baseline: dict[str, Any],
        half: int,
    ) -> None:
        self.pipe, self.costs, self.device = pipe, costs, device
        self.settings, self.baseline, self.half = settings, baseline, half
        self._students: dict[str, float] = {}

    def student_ratio(self, structure: list[Any]) -> float:
        """The pruned denoiser's FLOPs over the model's: block removal applied on the meta
        model and counted; channel ratios estimated as (1 - ratio)^2 (magnitudes decide which
        channels go; reports/pruning.md measured 0.574 at 0.25 on sd15)."""
        from compress.apply import run_transform
        from compress.context import RunContext
        from compress.evaluate.flops import count

        ratio = 1.0
        for cfg in structure:
            if cfg.kind == "prune_channels":
                ratio *= (1 - cfg.ratio) ** 2
                continue
            key = cfg.model_dump_json()
            if key not in self._students:
                student = copy.deepcopy(self.pipe)
                run_transform(student, cfg, RunContext())
                self._students[key] = count(student).denoiser_flops / self.costs.denoiser_flops
            ratio *= self._students[key]
        return ratio

    def call_seconds(
        self, steps: int, guided: bool, ratio: float = 1.0, full: float = 1.0
    ) -> float:
        """One image: text encoders, `steps` denoiser calls (both guidance halves batched when
        `guided`; `full` of them whole under DeepCache) and the VAE decode."""
        rate, c = self.device.rates, self.costs
        batch = 2 if guided else 1
        per_step = batch * ratio * c.denoiser_flops * (full + (1 - full) * SHALLOW)
        return (
            batch * c.text_flops / rate["text"]
            + steps * per_step / rate["denoiser"]
            + c.decode_flops / rate["decode"]
        )

    def baseline_call(self) -> float:
        s = {**self.settings.model_dump(), **self.baseline}
        steps = int(s.get("steps") or 50)
        return self.call_seconds(steps, float(s.get("guidance_scale") or 7.5) > 1)

    def candidate_call(self, recipe: Recipe) -> float:
        """The candidate's own call, from its sampler, student and cache transforms."""
        from compress.search.build import split
        from compress.transforms.runtime.cache import DEEPCACHE_INTERVAL

        plan = split(recipe)
        steps = int(self.baseline.get("steps") or 50)
        guidance = float(self.baseline.get("guidance_scale") or 7.5)
        full = 1.0
        for t in recipe.transforms:
            if t.kind == "sampler":
                steps = t.steps
                guidance = 1.0 if t.guidance_scale == "pipeline" else float(t.guidance_scale)
            elif t.kind == "distill_steps" and t.method == "trajectory":
                steps, guidance = t.student_steps, 1.0
            elif t.kind in ("distill_guidance",) or getattr(t, "guidance_embedding", False):
                guidance = 1.0
            elif t.kind == "cache" and t.method == "deepcache":
                full = 1.0 / (t.interval or DEEPCACHE_INTERVAL)
        ratio = self.student_ratio(plan.structure)
        call = self.call_seconds(steps, guidance > 1, ratio, max(full, 1.0 / max(steps, 1)))
        return call * self._quantized_factor(recipe)

    def _quantized_factor(self, recipe: Recipe) -> float:
        """How much slower a quantized call is on this device (1 on a GPU): each block group a
        format covers (down, up: half the Linear work each; a catch-all rule: all of it)."""
        if not self.device.name.startswith("CPU"):
            return 1.0
        extra = 0.0
        for t in recipe.transforms:
            if t.kind not in ("quantize", "qat"):
                continue
            for group in ("down_blocks", "up_blocks"):
                fmt = getattr(t, group, None)
                extra += 0.5 * (CPU_FORMAT_FACTOR.get(fmt, 1.0) - 1) if fmt else 0.0
            for rule in getattr(t, "rules", []):
                fmt = rule.format if hasattr(rule, "format") else rule.get("format")
                if str(getattr(rule, "match", "")) in ("re:.*", ".*"):
                    extra += CPU_FORMAT_FACTOR.get(fmt, 1.0) - 1
        return 1.0 + extra

    def compile_seconds(self, recipe: Recipe | None) -> float:
        compiled = recipe is not None and any(t.kind == "compile" for t in recipe.transforms)
        kind = "cpu" if self.device.name.startswith("CPU") else "gpu"
        return COMPILE_S[kind] if compiled else 0.0

    def evaluation_seconds(self, recipe: Recipe | None) -> float:
        """A trial's evaluation: paired rounds of candidate and baseline, then its images."""
        s = self.settings
        rounds = s.timed_runs + s.warmup
        prompts = s.num_prompts or 32
        own = self.candidate_call(recipe) if recipe is not None else self.baseline_call()
        compile_s = self.compile_seconds(recipe)
        return TRIAL_OVERHEAD_S + compile_s + rounds * (own + self.baseline_call()) + prompts * own

    def training_seconds(self, cfg: Any, ratio: float = 1.0) -> float:
        """One training transform in full: its steps at its batch, student and teacher."""
        teacher = TEACHER_CALLS.get(cfg.kind, 1)
        if cfg.kind == "distill_steps":
            method = cfg.method
            teacher = 2 * cfg.teacher_substeps if method == "trajectory" else TEACHER_CALLS[method]
        samples = cfg.steps * cfg.batch_size * cfg.grad_accum
        f = self.costs.denoiser_flops
        rate = self.device.rates.get(f"train@{cfg.batch_size}", self.device.rates["train"])
        return samples * (3 * ratio + teacher) * f / rate

    def training_memory(self, cfg: Any) -> float:
        """Bytes a training trial holds: the student in float32 with its gradients and Adam's
        two moments (only the adapter's for a LoRA), the teacher in the run's dtype, and the
        activations a backward keeps at the batch size."""
        params = self.costs.denoiser_params
        trained = params * 0.02 if getattr(cfg, "lora_rank", 0) else params
        activations = cfg.batch_size * self.costs.activation_bytes * min(1.0, self.half / 4)
        return params * 4 + trained * 12 + params * self.half + activations

    def draw_seconds(self, samples: int, steps: int) -> float:
        """Teacher-drawn training data: `samples` images of `steps` guided steps (latents only),
        drawn 16 prompts a call: batches as large as training's, priced at its rate."""
        rate, c = self.device.rates, self.costs
        return samples * (
            steps * 2 * c.denoiser_flops / rate["train"] + c.text_flops / rate["text"]
        )

    def data_bytes(self, samples: int) -> float:
        c = self.costs
        return samples * (math.prod(c.latent_shape) + math.prod(c.text_shape)) * self.half


def cost_model(cfg: SearchConfig, space: SearchSpace, device: Device | None = None) -> CostModel:
    """The cost model of `cfg.model` (a local folder, a built-in name or a published
    architecture: sd15, sdxl, ...) on the target GPU, or on this machine's CPUs (measured)."""
    from compress.evaluate.flops import count, meta_pipeline
    from compress.models.archs import ARCHS, build_arch_pipeline

    pipe = build_arch_pipeline(cfg.model) if cfg.model in ARCHS else meta_pipeline(cfg.model)
    settings = cfg.eval_settings()
    costs = count(pipe, settings.resolution)
    if device is None:
        if cfg.target_gpu:
            device = gpu(cfg.target_gpu)
        elif cfg.device == "cpu":
            batches = [_config(space, k).batch_size for k in _kinds(space, "training")] or [1]
            device = measured_cpu(
                copy.deepcopy(pipe), costs, max(1, int(cfg.cpus_per_trial)), batches
            )
        else:
            raise CompressError("the plan needs --target-gpu TYPE for a search on GPUs")
    half = 2 if cfg.target_gpu or cfg.dtype in ("float16", "bfloat16") else 4
    return CostModel(pipe, costs, device, settings, dict(cfg.baseline), half)


@dataclass
class Row:
    stage: str
    what: str
    seconds: float | None = None
    memory_gib: float | None = None
    disk_gib: float | None = None
    note: str = ""


@dataclass
class Plan:
    space: str
    model: str
    device: Device
    costs: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "model": self.model,
            "device": asdict(self.device),
            "costs": self.costs,
            "rows": [asdict(r) for r in self.rows],
            "budget": self.budget,
        }


def make_plan(cfg: SearchConfig, space: SearchSpace, device: Device | None = None) -> Plan:
    """The plan of `space` for `cfg` (model, target GPU, concurrency, time budget)."""
    model = cost_model(cfg, space, device)
    plan = Plan(space.name, cfg.model, model.device, asdict(model.costs))
    structures = _structure_rows(plan, model, space)
    train_s = []
    for kind in _kinds(space, "training"):
        cfg_t = _config(space, kind)
        # recovery trains a pruned student (the mean of the space's structures); others the model
        ratio = sum(structures) / len(structures) if kind == "distill" and structures else 1.0
        seconds = model.training_seconds(cfg_t, ratio)
        train_s.append(seconds)
        memory = model.training_memory(cfg_t)
        full = "" if memory <= model.device.memory else "; more than the device holds: lower "
        full += "batch_size, raise grad_accum" if full else ""
        what = f"{kind}: {cfg_t.steps} steps x batch {cfg_t.batch_size}"
        plan.rows.append(
            Row("training", what, seconds, memory / GIB, note=f"at its fixed settings{full}")
        )
        if getattr(cfg_t, "data", "auto") in ("prompts", "auto"):
            plan.rows.append(
                Row(
                    "teacher data",
                    f"{kind}: {cfg_t.samples} images x {cfg_t.teacher_steps} teacher steps",
                    model.draw_seconds(cfg_t.samples, cfg_t.teacher_steps),
                    disk_gib=model.data_bytes(cfg_t.samples) / GIB,
                    note="with --prompts: drawn once, shared by every trial that needs it",
                )
            )
    eval_s = model.evaluation_seconds(None)
    memory = 2 * model.costs.pipeline_params * model.half
    plan.rows.append(
        Row(
            "evaluation",
            "a trial at the baseline's call (an upper bound)",
            eval_s,
            memory / GIB,
            note=f"one call {model.baseline_call():.3g} s; candidate and baseline both held",
        )
    )
    plan.rows.append(
        Row(
            "cache",
            "a trained prefix (the pipeline folder)",
            disk_gib=model.costs.pipeline_params * 4 / GIB,
            note="float32, as training leaves it",
        )
    )
    mean_train = sum(train_s) / len(train_s) if train_s else 0.0
    _budget(plan, cfg, mean_train, eval_s)
    return plan


def _kinds(space: SearchSpace, stage: str) -> list[str]:
    from compress.transforms.base import Stage, registry

    want = Stage[stage]
    return [k for k in space.spec.transforms if registry()[k].stage == want]


def _config(space: SearchSpace, kind: str) -> Any:
    return space._config(kind, {}, where=f"transforms.{kind}")


def _structure_rows(plan: Plan, model: CostModel, space: SearchSpace) -> list[float]:
    """One row per structure choice: the student's FLOPs relative to the model's."""
    ratios = []
    for kind in _kinds(space, "structure"):
        knob = next(
            (k for k in space.spec.knobs.values() if k.sets and k.sets.startswith(f"{kind}.")),
            None,
        )
        name = knob.sets.partition(".")[2] if knob else None
        for choice in knob.choices if knob and knob.choices else [None]:
            fields = {name: choice} if name and choice is not None else {}
            ratio = model.student_ratio([space._config(kind, fields, where=kind)])
            ratios.append(ratio)
            how = "counted" if kind == "prune_blocks" else "estimated (1 - ratio)^2"
            label = f"{kind} {choice}" if choice is not None else kind
            plan.rows.append(Row("structure", label, 0.0, note=f"{ratio:.2f}x the FLOPs, {how}"))
    return ratios


def _budget(plan: Plan, cfg: SearchConfig, train_s: float, eval_s: float) -> None:
    concurrency = cfg.max_concurrent
    plan.budget = {
        "time_budget_s": cfg.time_budget,
        "concurrency": concurrency,
        "prefix_trial_s": train_s + eval_s,
        "suffix_trial_s": eval_s,
    }
    if cfg.time_budget:
        worker_s = cfg.time_budget * concurrency
        plan.budget["max_prefix_trials"] = int(worker_s // (train_s + eval_s)) if train_s else None
        plan.budget["max_suffix_trials"] = int(worker_s // eval_s) if eval_s else None


def measured_costs(record: Any) -> dict[str, float]:
    """What a finished trial of the ledger spent: its evaluation (paired timing and scored
    images) and the seconds per update of each transform it trained."""
    out = {"evaluation": record.times.get("timing", 0.0) + record.times.get("evaluation", 0.0)}
    by_kind: dict[str, list[float]] = {}
    for miss in record.cache.get("misses", []):
        if miss.get("trained_steps"):
            by_kind.setdefault(miss["kind"], []).extend([miss["seconds"], miss["trained_steps"]])
    for kind, v in by_kind.items():
        out[f"update:{kind}"] = sum(v[0::2]) / sum(v[1::2])
    # every image it scored: each rung's stage prompts, then the full set
    rungs = sum(int(r.get("prompts") or 0) for r in record.rungs)
    final = (record.stopped_at or {}).get("prompts") if record.stage == 2 else 0
    out["images"] = float(rungs + int(final or 0))
    return out


def predicted_costs(
    model: CostModel, recipe: Recipe, measured: dict[str, float]
) -> dict[str, float]:
    """The cost model's price of the same work: the trial's evaluation with its image count,
    and one update of each training transform (on the student the structure before it left)."""
    from compress.search.build import split

    plan = split(recipe)
    own, base = model.candidate_call(recipe), model.baseline_call()
    quantized = any(t.kind in ("quantize", "qat") for t in recipe.transforms)
    per_round = own + base + (own if quantized else 0.0)  # a quantized one's parent is timed too
    rounds = model.settings.timed_runs + model.settings.warmup
    out = {"evaluation": model.compile_seconds(recipe) + rounds * per_round}
    out["evaluation"] += measured.get("images", 0.0) * own
    ratio = model.student_ratio(plan.structure)
    for cfg in plan.training:
        one = cfg.model_copy(update={"steps": 1})
        out[f"update:{cfg.kind}"] = model.training_seconds(one, ratio)
    return out
