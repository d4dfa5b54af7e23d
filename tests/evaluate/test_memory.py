"""Peak memory of sampling: the pipeline's tensors plus the high-water mark sampling adds."""

from __future__ import annotations

import re

import pytest
import torch

import compress.evaluate.memory as memory
from compress.evaluate import EvalSettings, evaluate, generate_images
from compress.evaluate.memory import MIB, sampling_peak, tensor_bytes

PROMPTS = ["a red digit", "a blue digit", "a green digit", "the digit one"] * 2


def _peak(pipe, batch: int, device: str = "cpu", resolution: int = 32) -> memory.MemoryPeak:
    settings = EvalSettings(device=device, resolution=resolution, batch_size=batch, steps=1)
    with sampling_peak(pipe, device) as peak:
        generate_images(pipe, PROMPTS[:batch], list(range(batch)), settings)
    return peak


def _mlp(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(512, width), torch.nn.GELU(), torch.nn.Linear(width, 8)
    )


def test_tensors_are_counted_once_on_their_device(tiny_pipe):
    unet = tiny_pipe.unet
    expected = sum(t.numel() * t.element_size() for t in [*unet.parameters(), *unet.buffers()])
    assert tensor_bytes(unet, "cpu") == expected
    whole = tensor_bytes(tiny_pipe, "cpu")
    assert whole > expected and 4 * MIB < whole < 6 * MIB  # the tiny pipeline: ~4.9 MiB
    tied = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False), torch.nn.Linear(64, 64))
    tied[1].weight = tied[0].weight  # one storage, two parameters
    assert tensor_bytes(tied, "cpu") == (64 * 64 + 64) * 4
    assert tensor_bytes(tiny_pipe, "meta") == 0  # nothing of it lives there


def test_quantized_weights_count_by_what_they_hold(tiny_pipe):
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    unet = tiny_pipe.unet
    linear = sum(m.weight.numel() for m in unet.modules() if isinstance(m, torch.nn.Linear))
    before = tensor_bytes(unet, "cpu")
    quantize_(unet, Int8WeightOnlyConfig())  # tensor subclasses holding int8 data and scales
    saved = before - tensor_bytes(unet, "cpu")
    assert 0.9 * 3 * linear < saved < 3 * linear  # 4 bytes -> 1 a weight, less the scales


def test_a_larger_batch_peaks_higher(tiny_pipe):
    _peak(tiny_pipe, 1)  # the process's one-time allocations (thread pools, kernels)
    small, large = _peak(tiny_pipe, 1), _peak(tiny_pipe, 8)
    assert "VmHWM" in small.method or "psutil" in small.method
    assert (
        small.weights_mb == large.weights_mb == pytest.approx(tensor_bytes(tiny_pipe, "cpu") / MIB)
    )
    # 8 images of 32 px through the UNet and the VAE: about 15 MiB of activations more
    assert 0 < small.mb < large.mb - 5 and large.mb < 1024
    assert large.describe().startswith(f"peak memory {large.mb:.1f} MiB")


def test_a_larger_model_peaks_higher():
    x = torch.randn(64, 512)
    peaks = []
    for width in (1024, 8192):  # 2 MiB and 16 MiB of weights
        model = _mlp(width)
        model(x)  # warm
        with sampling_peak(model, "cpu") as peak, torch.inference_mode():
            model(x)
        peaks.append(peak)
    assert peaks[1].weights_mb - peaks[0].weights_mb == pytest.approx((513 + 8) * 7168 * 4 / MIB)
    assert peaks[0].mb > peaks[0].weights_mb > 0 and peaks[1].mb > peaks[0].mb + 10


def test_sampled_resident_set_where_the_high_water_mark_cannot_be_reset(tiny_pipe, monkeypatch):
    monkeypatch.setattr(memory, "high_water_resettable", lambda: False)
    _peak(tiny_pipe, 1)
    peak = _peak(tiny_pipe, 8)
    assert "psutil" in peak.method
    assert peak.weights_mb + 5 < peak.mb < 1024


def test_a_device_without_a_counter_says_so(tiny_pipe):
    with sampling_peak(tiny_pipe, "mps") as peak:
        pass
    assert peak.mb is None and "no peak-memory counter for device mps" in peak.describe()


def test_evaluate_records_the_peak_of_its_sampling(tiny_pipe):
    from rich.console import Console

    from compress.evaluate import reference_images
    from compress.evaluate.report import score_table

    settings = EvalSettings(metric="fidelity", num_prompts=2, steps=1, timed_runs=1, warmup=0)
    score = evaluate(tiny_pipe, settings, reference_images=reference_images(tiny_pipe, settings))
    assert score.peak_memory_mb is not None and score.peak_memory_mb > 4  # tensors ~4.9 MiB
    assert score.peak_memory.startswith(f"peak memory {score.peak_memory_mb:.1f} MiB")
    assert score.to_recipe_scores().peak_memory_mb == score.peak_memory_mb
    console = Console(record=True, width=120)
    console.print(score_table(score, "eval"))  # what `compress eval` prints
    assert re.search(
        rf"peak memory MiB \(sampling\) +│ +{score.peak_memory_mb:.1f}", console.export_text()
    )


@pytest.mark.gpu
def test_cuda_allocator_peak_grows_with_the_batch(tiny_pipe):
    tiny_pipe.to("cuda")
    _peak(tiny_pipe, 1, "cuda")
    small, large = _peak(tiny_pipe, 1, "cuda", 128), _peak(tiny_pipe, 8, "cuda", 128)
    assert small.method == "CUDA allocator peak"
    assert small.weights_mb == pytest.approx(tensor_bytes(tiny_pipe, "cuda") / MIB)
    assert 0 < small.mb < large.mb and large.sampling_mb > small.sampling_mb
