"""Quantization: post-training (PTQ) and quantization-aware training (QAT), timestep-aware
calibration, per-block sensitivity, and the backends that provide the formats."""
