"""Runtime transforms: the sampler's call defaults, feature caching (DeepCache and diffusers'
cache hooks) and torch.compile. They change no weight; compress.load replays them."""
