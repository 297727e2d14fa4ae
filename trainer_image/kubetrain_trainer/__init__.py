"""Kubetrain's trainer: a DeepSpeed-style engine on PyTorch's native distributed stack."""
