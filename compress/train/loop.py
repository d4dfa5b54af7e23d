"""The one training loop: a student fitted to a loss hook on accelerate, resumable from a folder."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch
    from torch import nn

# loss_fn(student, teacher, batch) -> loss, or (loss, {part name: float}) for the progress line.
LossOut = "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"
LossFn = Callable[["nn.Module", "nn.Module | None", Any], LossOut]
STATE_FILE = "trainer.json"


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation knobs; `steps` counts optimizer updates (each of `grad_accum` micro-batches)."""

    steps: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = 0  # 0: only a final checkpoint (when a folder is given)
    seed: int = 0
    progress: bool = True
    description: str = "training"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.grad_accum < 1:
            raise CompressError(
                f"steps and grad_accum must be >= 1, got {self.steps}, {self.grad_accum}"
            )
        if not self.lr > 0:
            raise CompressError(f"lr must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean loss of each optimizer step
    parts: dict[str, list[float]] = field(default_factory=dict)

    def mean_loss(self, first: bool, n: int = 5) -> float:
        xs = self.losses[:n] if first else self.losses[-n:]
        return sum(xs) / len(xs)


def _accelerator(settings: TrainSettings) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps one process-wide state that refuses a second, different precision; a
    # process that trains twice (distillation, then QAT) starts each run from a clean state.
    # The distributed PartialState (set by `accelerate launch`) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(
        mixed_precision=settings.mixed_precision, gradient_accumulation_steps=settings.grad_accum
    )


def _latest_checkpoint(folder: Path) -> Path | None:
    done = [p for p in folder.glob("checkpoint-*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _save(acc: Any, folder: Path, step: int, result: TrainResult) -> None:
    """Checkpoint into a temporary folder, then rename: a crash never leaves half a checkpoint.

    Every process calls accelerate's save_state (each writes its own RNG state); the main
    process writes the loop state and renames.
    """
    final = folder / f"checkpoint-{step}"
    tmp = folder / f".checkpoint-{step}.partial"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        state = {"step": step, "losses": result.losses, "parts": result.parts}
        (tmp / STATE_FILE).write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in folder.glob("checkpoint-*"):  # keep only the newest
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _batches(acc: Any, data: Iterable[Any], skip: int) -> Iterator[Any]:
    """Cycle over `data` forever, skipping `skip` micro-batches first (resume)."""
    from accelerate.utils import send_to_device
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader):
        loader = acc.prepare(data)  # shards across processes under `accelerate launch`
        per_epoch = len(loader)
        skip %= max(per_epoch, 1)
        first = acc.skip_first_batches(loader, skip) if skip else loader
        yield from first
        while True:
            yield from loader
    n = 0
    while True:
        empty = True
        for batch in data:
            empty = False
            n += 1
            if n > skip:
                yield send_to_device(batch, acc.device)
        if empty:
            raise CompressError("the training data yielded no batch")


def train(
    student: nn.Module,
    loss_fn: LossFn,
    data: Iterable[Any],
    settings: TrainSettings,
    *,
    teacher: nn.Module | None = None,
    params: Iterable[torch.nn.Parameter] | None = None,
    folder: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Fit `student` (in place) by AdamW on `loss_fn`; with `folder`, checkpoint and resume there.

    Works unchanged under `accelerate launch` (DDP over several GPUs): a DataLoader is sharded,
    gradients are accumulated and synchronised by accelerate, and only the main process writes.
    """
    import torch
    from diffusers.optimization import get_scheduler
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    acc = _accelerator(settings)
    torch.manual_seed(settings.seed + acc.process_index)
    student.train()
    trainable = [
        p for p in (params if params is not None else student.parameters()) if p.requires_grad
    ]
    if not trainable:
        raise CompressError("the student has no trainable parameters")
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = get_scheduler(
        "constant_with_warmup",
        optimizer,
        num_warmup_steps=settings.warmup_steps * acc.num_processes,
    )
    model, optimizer, schedule = acc.prepare(student, optimizer, schedule)
    frozen = [p.requires_grad for p in teacher.parameters()] if teacher is not None else []
    if teacher is not None:
        teacher.requires_grad_(False)
        teacher.eval().to(acc.device)

    result = TrainResult(steps=0, resumed_from=0, seconds=0.0)
    ckpt_dir = Path(folder) if folder is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        latest = _latest_checkpoint(ckpt_dir)
        if latest is not None:
            acc.load_state(str(latest))
            state = json.loads((latest / STATE_FILE).read_text())
            result.steps = result.resumed_from = int(state["step"])
            result.losses, result.parts = state["losses"], state["parts"]

    start = time.perf_counter()
    batches = _batches(acc, data, result.resumed_from * settings.grad_accum)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    show = settings.progress and acc.is_main_process
    with Progress(*columns, disable=not show, transient=True) as bar:
        task = bar.add_task(
            settings.description, total=settings.steps, completed=result.steps, info=""
        )
        while result.steps < settings.steps:
            total, parts = 0.0, {}
            for _ in range(settings.grad_accum):
                with acc.accumulate(model), acc.autocast():
                    out = loss_fn(model, teacher, next(batches))
                    loss, extra = out if isinstance(out, tuple) else (out, {})
                    if not torch.isfinite(loss):
                        raise CompressError(
                            f"training loss became {loss.item()} at step "
                            f"{result.steps}; lower the learning rate"
                        )
                    acc.backward(loss)
                    if acc.sync_gradients and settings.max_grad_norm:
                        acc.clip_grad_norm_(trainable, settings.max_grad_norm)
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad(set_to_none=True)
                total += loss.item() / settings.grad_accum
                for k, v in extra.items():
                    parts[k] = parts.get(k, 0.0) + float(v) / settings.grad_accum
            result.steps += 1
            result.losses.append(total)
            for k, v in parts.items():
                result.parts.setdefault(k, []).append(v)
            info = f"loss {total:.4g}" + "".join(f" {k} {v:.3g}" for k, v in parts.items())
            bar.update(task, completed=result.steps, info=info)
            every = settings.checkpoint_every
            if ckpt_dir is not None and every and result.steps % every == 0:
                _save(acc, ckpt_dir, result.steps, result)
    every = settings.checkpoint_every
    trained = result.steps > result.resumed_from
    if ckpt_dir is not None and trained and (not every or result.steps % every):
        _save(acc, ckpt_dir, result.steps, result)
    acc.wait_for_everyone()
    student.eval()
    if teacher is not None:  # leave the caller's teacher as it was given
        for p, flag in zip(teacher.parameters(), frozen, strict=True):
            p.requires_grad_(flag)
    result.seconds = time.perf_counter() - start
    return result
