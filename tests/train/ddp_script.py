"""Run by test_distributed.py under torchrun: two CPU processes train one student with DDP."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compress.train import TrainSettings, train


def loss_fn(student: nn.Module, teacher: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    (x,) = batch
    with torch.no_grad():
        target = teacher(x)
    return nn.functional.mse_loss(student(x), target)


if __name__ == "__main__":
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    student = nn.Sequential(nn.Linear(8, 4))
    data = DataLoader(TensorDataset(torch.randn(64, 8)), batch_size=8)
    settings = TrainSettings(steps=int(sys.argv[2]), lr=3e-2, grad_accum=2, progress=False)
    res = train(student, loss_fn, data, settings, teacher=teacher, folder=sys.argv[1])
    state = PartialState()
    out = {
        "rank": state.process_index,
        "world": state.num_processes,
        "steps": res.steps,
        "resumed": res.resumed_from,
        "weight": student[0].weight.flatten().tolist(),
    }
    (Path(sys.argv[3]) / f"rank{state.process_index}.json").write_text(json.dumps(out))
