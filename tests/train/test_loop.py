"""The shared training loop: it lowers a loss, accumulates, checkpoints and resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compress.errors import CompressError
from compress.train import TrainSettings, train


def _models() -> tuple[nn.Module, nn.Module, DataLoader]:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    student = nn.Sequential(nn.Linear(8, 4))
    data = DataLoader(TensorDataset(torch.randn(64, 8)), batch_size=16, shuffle=False)
    return student, teacher, data


def kd_loss(student: nn.Module, teacher: nn.Module, batch: list[torch.Tensor]):
    (x,) = batch
    with torch.no_grad():
        target = teacher(x)
    loss = nn.functional.mse_loss(student(x), target)
    return loss, {"mse": loss.item()}


def test_loss_goes_down_with_accumulation() -> None:
    student, teacher, data = _models()
    before = [p.detach().clone() for p in teacher.parameters()]
    res = train(
        student,
        kd_loss,
        data,
        TrainSettings(steps=40, lr=3e-2, grad_accum=2, progress=False),
        teacher=teacher,
    )
    assert res.steps == 40 and len(res.losses) == 40 and len(res.parts["mse"]) == 40
    assert res.mean_loss(first=False) < 0.5 * res.mean_loss(first=True)
    assert not student.training
    assert all(p.requires_grad for p in teacher.parameters())  # left as it was given
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), before, strict=True))


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    settings = TrainSettings(steps=6, lr=1e-2, checkpoint_every=3, progress=False)
    student, teacher, data = _models()
    full = train(student, kd_loss, data, settings, teacher=teacher)
    end_full = [p.detach().clone() for p in student.parameters()]

    student, teacher, data = _models()
    half = TrainSettings(steps=3, lr=1e-2, checkpoint_every=3, progress=False)
    train(student, kd_loss, data, half, teacher=teacher, folder=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-3"]
    student, teacher, data = _models()  # a fresh process would start from scratch like this
    rest = train(student, kd_loss, data, settings, teacher=teacher, folder=tmp_path)
    assert rest.resumed_from == 3 and rest.steps == 6
    assert rest.losses == pytest.approx(full.losses, rel=1e-5)
    for a, b in zip(student.parameters(), end_full, strict=True):
        torch.testing.assert_close(a, b)
    assert (tmp_path / "checkpoint-6" / "trainer.json").is_file()


def test_plain_iterable_and_errors() -> None:
    student, teacher, _ = _models()
    batches = [[torch.randn(4, 8)] for _ in range(3)]
    res = train(student, kd_loss, batches, TrainSettings(steps=5, progress=False), teacher=teacher)
    assert res.steps == 5
    with pytest.raises(CompressError, match="no batch"):
        train(student, kd_loss, [], TrainSettings(steps=1, progress=False), teacher=teacher)
    with pytest.raises(CompressError, match="steps"):
        TrainSettings(steps=0)
    nan = lambda s, t, b: s(b[0]).sum() * float("nan")  # noqa: E731
    with pytest.raises(CompressError, match="learning rate"):
        train(student, nan, batches, TrainSettings(steps=2, progress=False))
