"""Search progress on the terminal: one rich progress bar and one line per finished trial.

A Tune Callback in the driver; Ray's own table is switched off because it reprints every trial
each few seconds.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from compress.search.ledger import TrialRecord
from compress.search.pareto import pareto_front

_STYLE = {"complete": "green", "stopped": "yellow", "failed": "red"}


class ProgressCallback(Callback):
    def __init__(
        self, console: Any, total: int, done: list[TrialRecord], baseline_quality: float
    ) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._console = console
        self._records = list(done)
        self._baseline = (1.0, baseline_quality)  # relative latency, quality of the uncompressed
        self._running = 0
        self._progress = Progress(
            TextColumn("[bold]search"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task = self._progress.add_task(
            "search", total=total, completed=len(done), status=self._status(running=0)
        )

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config; the terminal handles stay with the live driver object.
        return {"_records": self._records, "_baseline": self._baseline, "_running": 0}

    def _status(self, running: int) -> str:
        full = [
            r
            for r in self._records
            if r.state == "complete" and r.feasible and r.faster and r.point
        ]
        front = [
            i for i in pareto_front([r.point for r in full] + [self._baseline]) if i < len(full)
        ]
        stopped = sum(r.state == "stopped" for r in self._records)
        failed = sum(r.state == "failed" for r in self._records)
        best = max((full[i].speedup for i in front), default=None)
        fastest = f" (up to {best:.1f}x)" if best else ""
        return (
            f"running {running} · front {len(front)}{fastest} · stopped early {stopped} · "
            f"failed {failed}"
        )

    def setup(self, **info: Any) -> None:
        self._progress.start()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._running += 1
        self._progress.update(self._task, status=self._status(self._running))

    def record(self, r: TrialRecord) -> None:
        """Called by the ledger callback once a trial's record is written."""
        self._records.append(r)
        self._running = max(0, self._running - 1)
        knobs = " ".join(f"{k}={v}" for k, v in r.params.items())
        if r.state in ("failed", "interrupted") or r.speedup is None:
            what = f"failed: {r.error}"
        else:
            low, high = r.speedup_ci or (float("nan"), float("nan"))
            what = f"{r.speedup:.2f}x [{low:.2f}, {high:.2f}], quality {r.quality:.4f}"
            if r.state == "stopped" and r.stopped_at:
                at = r.stopped_at.get("training_fraction")
                what += f", stopped at {r.stopped_at.get('prompts')} prompts" + (
                    f", {at:g} of its training" if at is not None else ""
                )
            what += "" if r.feasible else " (infeasible)"
            what += "" if r.faster else " (no faster than the baseline)"
        style = _STYLE.get(r.state, "white")
        self._console.print(
            f"[{style}]{r.state:>8}[/{style}] trial {r.number:4d}  {what}  [dim]{knobs}[/dim]",
            highlight=False,
        )
        self._progress.update(self._task, advance=1, status=self._status(self._running))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._progress.stop()
