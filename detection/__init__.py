"""Faster R-CNN on the zoo backbones (built on torchvision.models.detection). Work in progress."""
