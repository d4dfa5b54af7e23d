"""Structural pruning: whole blocks (UNet and transformer) and channels (torch-pruning), with
the plans that map a pruned model back to its original weights."""
