"""Kubetrain: run very large PyTorch training on Kubernetes.

Rooms: `kubetrain.api` (the contract), `kubetrain.controller` (the operator),
`kubetrain.tools` (planner, local runs, plots), `kubetrain.cli` (the `kubetrain` command).
"""

__version__ = "0.1.0"
