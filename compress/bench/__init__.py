"""The GPU benchmark: a check of the shipped recipes on the target GPU (`compress gpu-check`) and
the published baselines they are compared with."""
