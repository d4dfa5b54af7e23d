"""Timestep-aware calibration: denoiser inputs from real trajectories, spread over the schedule."""

from __future__ import annotations

import pytest
import torch

from compress.errors import CompressError
from compress.transforms.quantize._calibration import (
    Calibration,
    capture,
    kept_steps,
    replay,
    timesteps_of,
)


def test_captured_timesteps_span_the_schedule_and_counts_match(tiny_pipe) -> None:
    cfg = Calibration(prompts=3, timesteps=4, steps=10)
    calls = capture(tiny_pipe, cfg, ["a red seven", "a blue two", "a green one"], seed=1)
    schedule = [float(t) for t in tiny_pipe.scheduler.timesteps]  # the run just sampled
    assert len(schedule) == 10 and len(calls) == cfg.timesteps
    kept = timesteps_of(calls)
    assert kept[0] == schedule[0] and kept[-1] == schedule[-1]  # first and last step
    assert kept == [schedule[i] for i in kept_steps(10, 4)] == sorted(kept, reverse=True)
    for call in calls:  # every prompt, doubled by classifier-free guidance
        assert call["sample"].shape[0] == 2 * cfg.prompts
        assert call["encoder_hidden_states"].shape[0] == 2 * cfg.prompts
    # the trajectory is real: late latents differ from the initial noise
    assert not torch.allclose(calls[0]["sample"], calls[-1]["sample"])
    seen = []
    tiny_pipe.unet.register_forward_hook(lambda *_: seen.append(1))
    replay(tiny_pipe.unet, calls)
    assert len(seen) == cfg.timesteps


def test_kept_steps_are_even_and_bad_counts_are_refused(tiny_pipe) -> None:
    assert kept_steps(20, 5) == [0, 5, 10, 14, 19]
    assert kept_steps(7, 1) == [6]
    with pytest.raises(ValueError, match="at most `steps`"):
        Calibration(timesteps=30, steps=20)
    with pytest.raises(CompressError, match="asks for 2 prompts"):
        capture(tiny_pipe, Calibration(prompts=2, timesteps=2, steps=2), ["one"])


def test_sdxl_calls_keep_the_added_conditions() -> None:
    from compress.models.tiny import build_tiny_sdxl_pipeline

    pipe = build_tiny_sdxl_pipeline()
    calls = capture(pipe, Calibration(prompts=2, timesteps=3, steps=4), ["a red seven", "a two"])
    assert len(calls) == 3
    for call in calls:
        assert set(call["added_cond_kwargs"]) == {"text_embeds", "time_ids"}
        assert call["added_cond_kwargs"]["time_ids"].shape[0] == call["sample"].shape[0] == 4
    replay(pipe.unet, calls)  # the captured calls are complete denoiser inputs
