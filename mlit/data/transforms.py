"""CPU augmentation with torchvision.transforms.v2 (paper Tables 3-5, the zoo grid)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from mlit.recipe.schema import Augment

POLICIES = {"cifar10": v2.AutoAugmentPolicy.CIFAR10, "svhn": v2.AutoAugmentPolicy.SVHN,
            "imagenet": v2.AutoAugmentPolicy.IMAGENET}


def to_normalized_tensor(mean, std) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def color_jitter(strength: float) -> v2.RandomApply:
    """SimCLR's colour distortion of strength s: jitter(0.8s, 0.8s, 0.8s, 0.2s), p = 0.8."""
    s = strength
    return v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8)


def train_transform(aug: Augment, size: int, mean, std) -> v2.Compose:
    steps = [v2.RandomResizedCrop((size, size), scale=aug.crop_scale, antialias=True)
             if aug.random_resized_crop else v2.Resize((size, size), antialias=True)]
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.rotation:
        steps.append(v2.RandomRotation(aug.rotation))
    if aug.color_jitter:
        steps.append(color_jitter(aug.color_jitter))
    if aug.grayscale:
        steps.append(v2.RandomGrayscale(p=aug.grayscale))
    if aug.auto_augment:
        steps.append(v2.AutoAugment(POLICIES[aug.auto_augment]))
    steps += to_normalized_tensor(mean, std)
    if aug.random_erasing:
        steps.append(v2.RandomErasing(p=aug.random_erasing))
    return v2.Compose(steps)


class TwoViews:
    """Two independent augmentations of one image (SimCLR)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)


def eval_transform(size: int, mean, std) -> v2.Compose:
    return v2.Compose([v2.Resize((size, size), antialias=True), *to_normalized_tensor(mean, std)])


def batch_mixing(aug: Augment, num_classes: int):
    """MixUp / CutMix on whole batches (labels become soft), or None when both are off."""
    mixers = []
    if aug.cutmix:
        mixers.append(v2.CutMix(alpha=aug.cutmix, num_classes=num_classes))
    if aug.mixup:
        mixers.append(v2.MixUp(alpha=aug.mixup, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
