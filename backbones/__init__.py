"""The ResNet zoo of "Deep Residual Learning for Image Recognition" (He et al., 2015)."""

from .registry import create_model, get_model_entry, list_models, register_model
from .resnet import FeatureSpec, ResNet, cifar_resnet, imagenet_resnet

__all__ = [
    "FeatureSpec",
    "ResNet",
    "cifar_resnet",
    "create_model",
    "get_model_entry",
    "imagenet_resnet",
    "list_models",
    "register_model",
]
