"""Kubetrain: run very large PyTorch training on Kubernetes."""

__version__ = "0.1.0"

GROUP = "kubetrain.dev"
VERSION = "v1alpha1"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
API_VERSION = f"{GROUP}/{VERSION}"
