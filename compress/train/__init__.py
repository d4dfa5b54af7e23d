"""The shared training loop (accelerate) and the data and diffusion pieces its users share."""

from compress.train.loop import LossFn, TrainResult, TrainSettings, train

__all__ = ["LossFn", "TrainResult", "TrainSettings", "train"]
