"""A training set that lives on the training device as uint8, augmented in whole batches.

At these model sizes a GPU starves on a per-image Python pipeline (airbench's lesson), so:
- the split is decoded once into a (N, C, H, W) uint8 tensor on the device;
- shuffling is a randperm on the device, from a generator reseeded every epoch;
- random resized crop, flip and rotation are one affine `grid_sample` per batch, with
  torchvision's sampling rules (scale, log-uniform ratio, 10 attempts, centre fallback);
- random erasing is a vectorised mask with torchvision's rules;
- AutoAugment, colour jitter and grayscale (torchvision v2 ops on uint8) draw their random
  operation per group of `group_size` images: per-sample variety without per-sample Python.

Datasets of large images of many sizes (Flowers102, 500 px on the shorter side) keep their
training split as a list of the decoded images at full resolution: random crops are drawn
in each image's own frame and resized with torchvision's own antialiased resize, as the CPU
pipeline does, so a crop of a fifth of a flower has the detail it has there, not that of a
36 px thumbnail (a smaller stored copy would filter the detail twice; tests/
test_device_data.py measures it). Flowers102's 1,020 training images take about 1 GB.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from mlit.data.errors import DatasetInvalid
from mlit.data.seeds import derived_seed
from mlit.data.transforms import POLICIES, color_jitter
from mlit.distributed import World
from mlit.recipe.schema import Augment


def decode(dataset, transform) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every image of a PIL dataset through `transform` (to uint8 tensors), and the labels;
    a file that does not decode is a DatasetInvalid naming it."""

    saved, dataset.transform = dataset.transform, transform
    images, labels = [], []
    try:
        for i in range(len(dataset)):
            try:
                image, label = dataset[i]
            except Exception as err:
                files = getattr(dataset, "_image_files", None)
                where = files[i] if files is not None else f"image {i}"
                raise DatasetInvalid(f"{where}: cannot be decoded ({err})") from None
            images.append(image)
            labels.append(label)
    finally:
        dataset.transform = saved
    return images, torch.tensor(labels)


def dataset_to_ragged(dataset) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(images, each (C, H_i, W_i) uint8 at its own full resolution, labels)."""
    return decode(dataset, v2.PILToTensor())


def has_arrays(dataset) -> bool:
    """Datasets held as one array of equal-size images (CIFAR, SVHN, digits)."""
    data = getattr(dataset, "data", None)
    return (isinstance(data, np.ndarray) and data.ndim == 4) or (
        hasattr(dataset, "images") and dataset.images.ndim == 3)


def dataset_to_uint8(dataset, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, H, W) uint8, labels (N,)) from a loaded dataset, without transforms."""
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray) and data.ndim == 4:  # CIFAR (N,H,W,C), SVHN (N,C,H,W)
        images = torch.from_numpy(data)
        if images.shape[-1] == 3:
            images = images.permute(0, 3, 1, 2)
        labels = getattr(dataset, "targets", None)
        labels = labels if labels is not None else dataset.labels
        return images.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if hasattr(dataset, "images") and dataset.images.ndim == 3:  # digits
        images = torch.from_numpy(dataset.images).unsqueeze(1).expand(-1, 3, -1, -1)
        return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.long)
    # anything else (Flowers102): decode once, resized to the model's input size, as the
    # evaluation transform does (a training split keeps more: dataset_to_ragged)
    images, labels = decode(dataset, v2.Compose([v2.Resize((size, size), antialias=True),
                                                 v2.PILToTensor()]))
    return torch.stack(images), labels


def box_attempts(u: torch.Tensor, area: int, scale, ratio):
    """torchvision's draws for a random box, every attempt at once: u (n, attempts, 4)
    uniform -> (sqrt(a * r), sqrt(a / r)) rounded, a uniform in scale * area, r log-uniform."""
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    return torch.round(torch.sqrt(target * aspect)), torch.round(torch.sqrt(target / aspect))


def first_fit(u: torch.Tensor, ok: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
              height: int, width: int):
    """Per image, the first attempt that fits (`ok`), placed uniformly: (top, left, h, w)."""
    first = ok.float().argmax(1, keepdim=True)
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    top = torch.floor(u[..., 2].gather(1, first)[:, 0] * (height - h + 1))
    left = torch.floor(u[..., 3].gather(1, first)[:, 0] * (width - w + 1))
    return top, left, h, w


def sample_boxes(n: int, height: int, width: int, scale, ratio, generator, device,
                 attempts: int = 10):
    """torchvision's RandomResizedCrop.get_params for n images at once: (top, left, h, w)."""
    u = torch.rand(n, attempts, 4, generator=generator, device=device)
    w, h = box_attempts(u, height * width, scale, ratio)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    found = ok.any(1)
    top, left, h, w = first_fit(u, ok, h, w, height, width)
    # no attempt fitted: the whole image, clamped to the ratio range, centred
    in_ratio = width / height
    fw = float(width) if ratio[0] <= in_ratio <= ratio[1] else (
        float(width) if in_ratio < ratio[0] else float(round(height * ratio[1])))
    fh = float(height) if ratio[0] <= in_ratio <= ratio[1] else (
        float(round(width / ratio[0])) if in_ratio < ratio[0] else float(height))
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    top = torch.where(found, top, float((height - fh) // 2))
    left = torch.where(found, left, float((width - fw) // 2))
    return top, left, h, w


def geometric(images: torch.Tensor, size: int, aug: Augment | None, generator) -> torch.Tensor:
    """Crop, flip, rotate and resize every image with one grid_sample; float pixels 0-255."""
    n, _, H, W = images.shape
    device = images.device
    if aug is not None and aug.random_resized_crop:
        top, left, h, w = sample_boxes(n, H, W, aug.crop_scale, (3 / 4, 4 / 3), generator,
                                       device)
    else:
        top, left = torch.zeros(n, device=device), torch.zeros(n, device=device)
        h, w = torch.full((n,), float(H), device=device), torch.full((n,), float(W), device=device)
    sx, sy = w / W, h / H  # output [-1, 1] -> the crop, in normalised input coordinates
    cx, cy = 2 * (left + w / 2) / W - 1, 2 * (top + h / 2) / H - 1
    if aug is not None and aug.hflip:
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        sx = torch.where(flip, -sx, sx)
    cos, sin = torch.ones(n, device=device), torch.zeros(n, device=device)
    if aug is not None and aug.rotation:
        angle = (torch.rand(n, generator=generator, device=device) * 2 - 1) * aug.rotation
        # rotating the output grid by -angle turns the picture by +angle (counter-clockwise)
        rad = torch.deg2rad(angle)
        cos, sin = torch.cos(rad), torch.sin(rad)
    theta = torch.stack([torch.stack([sx * cos, sx * sin, cx], 1),
                         torch.stack([-sy * sin, sy * cos, cy], 1)], 1)  # (n, 2, 3)
    shape = (n, images.shape[1], size, size)
    grid = F.affine_grid(theta, shape, align_corners=False)
    # "crop, then resize": sample only inside the box, between its outer pixel centres,
    # as torchvision resizes the cropped image and never reads the pixels around it
    lo = torch.stack([(2 * left + 1) / W - 1, (2 * top + 1) / H - 1], -1).view(n, 1, 1, 2)
    hi = torch.stack([(2 * (left + w) - 1) / W - 1, (2 * (top + h) - 1) / H - 1],
                     -1).view(n, 1, 1, 2)
    grid = torch.maximum(torch.minimum(grid, hi), lo)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    if aug is not None and aug.rotation:  # corners turned in from outside the crop are 0
        zeros = torch.zeros_like(cx)
        rot = torch.stack([torch.stack([cos, sin, zeros], 1),
                           torch.stack([-sin, cos, zeros], 1)], 1)
        q = F.affine_grid(rot, shape, align_corners=False)
        out = out * (q.abs() <= 1).all(-1).unsqueeze(1)
    return out


def crop_resize_each(images: list[torch.Tensor], size: int, aug: Augment | None,
                     generator) -> torch.Tensor:
    """Images of different sizes to (n, C, size, size) float pixels 0-255: a random resized
    crop drawn in each image's own frame (torchvision's rules), or the whole image, resized
    by torchvision's antialiased resize of uint8 images (the CPU pipeline's)."""
    out = []
    for image in images:
        _, H, W = image.shape
        if aug is not None and aug.random_resized_crop:
            top, left, h, w = (int(t) for t in sample_boxes(
                1, H, W, aug.crop_scale, (3 / 4, 4 / 3), generator, image.device))
        else:
            top, left, h, w = 0, 0, H, W
        out.append(v2.functional.resized_crop(image, top, left, h, w, [size, size],
                                              antialias=True))
    return torch.stack(out).float()


def per_group(images: torch.Tensor, op, group_size: int) -> torch.Tensor:
    """Apply a random torchvision op with a fresh draw for every group of images."""
    return torch.cat([op(chunk) for chunk in images.split(group_size)])


def random_erasing(x: torch.Tensor, p: float, generator, scale=(0.02, 0.33),
                   ratio=(0.3, 3.3), attempts: int = 10) -> torch.Tensor:
    """torchvision's RandomErasing(p, value=0) for a whole batch."""
    n, _, H, W = x.shape
    device = x.device
    u = torch.rand(n, attempts, 4, generator=generator, device=device)
    h, w = box_attempts(u, H * W, scale, ratio)  # erasing draws the height first
    ok = (h < H) & (w < W)
    top, left, h, w = first_fit(u, ok, h, w, H, W)
    erase = ok.any(1) & (torch.rand(n, generator=generator, device=device) < p)
    rows = torch.arange(H, device=device).view(1, H, 1)
    cols = torch.arange(W, device=device).view(1, 1, W)
    box = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
           & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)))
    return x.masked_fill((box & erase.view(-1, 1, 1)).unsqueeze(1), 0.0)


class DeviceLoader:
    """Batches of (normalised images, labels) from device-resident uint8 data: one
    (N, C, H, W) tensor, or a list of (C, H_i, W_i) images of different sizes.

    The runner's interface (mlit/data/loaders.py): len() and `epoch(seed, start)`. The order
    comes from the epoch's seed, and every batch's augmentation from its own generator, keyed
    by (epoch seed, batch, rank), so an epoch can start at any batch with the draws an unbroken
    epoch has there. Iterating the loader itself gives an epoch from `generator`'s state (a
    fixed one for an evaluation loader: the same views at every evaluation)."""

    def __init__(self, images: torch.Tensor | list[torch.Tensor], labels: torch.Tensor,
                 batch_size: int,
                 image_size: int, mean, std, augment: Augment | None = None,
                 shuffle: bool = True, drop_last: bool = True, two_views: bool = False,
                 group_size: int = 16, world: World = World()):
        """batch_size is the global batch; each rank yields its world-th share of each."""
        self.images, self.labels, self.world = images, labels, world
        self.batch_size, self.image_size = batch_size, image_size
        self.augment, self.shuffle, self.drop_last = augment, shuffle, drop_last
        self.two_views, self.group_size = two_views, group_size
        device = labels.device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.generator = torch.Generator(device=device)  # the epoch's order and batch keys
        self.aug_generator = self.generator

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def transform(self, batch: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        aug = self.augment
        if isinstance(batch, list):  # images of many sizes: crop each, then the rest
            batch = crop_resize_each(batch, self.image_size, aug, self.aug_generator)
            if aug is not None:
                aug = aug.model_copy(update={"random_resized_crop": False})
        x = geometric(batch, self.image_size, aug, self.aug_generator)
        if aug is not None and (aug.color_jitter or aug.grayscale or aug.auto_augment):
            x = x.round_().clamp_(0, 255).to(torch.uint8)
            if aug.color_jitter:
                x = per_group(x, color_jitter(aug.color_jitter), self.group_size)
            if aug.grayscale:
                gray = v2.functional.rgb_to_grayscale(x, num_output_channels=3)
                pick = torch.rand(len(x), generator=self.aug_generator, device=x.device) < aug.grayscale
                x = torch.where(pick.view(-1, 1, 1, 1), gray, x)
            if aug.auto_augment:
                x = per_group(x, v2.AutoAugment(POLICIES[aug.auto_augment]), self.group_size)
            x = x.float()
        x = (x - self.mean) / self.std
        if aug is not None and aug.random_erasing:
            x = random_erasing(x, aug.random_erasing, self.aug_generator)
        return x

    def epoch(self, seed: int, start: int = 0):
        self.generator.manual_seed(seed)
        return self.batches(start)

    def __iter__(self):
        if not self.shuffle:
            self.generator.manual_seed(0)
        return self.batches(0)

    def batches(self, start: int):
        n, device, w = len(self.images), self.labels.device, self.world
        order = (torch.randperm(n, generator=self.generator, device=device)
                 if self.shuffle else torch.arange(n, device=device))
        key = int(torch.randint(2**62, (1,), generator=self.generator, device=device))
        for b in range(start, len(self)):
            # one order for every rank; each rank's augmentation of each batch its own
            self.aug_generator = torch.Generator(device=device).manual_seed(
                derived_seed(key, b, w.rank))
            idx = order[b * self.batch_size:(b + 1) * self.batch_size][w.rank::w.size]
            if isinstance(self.images, list):
                batch = [self.images[i] for i in idx.tolist()]
            else:
                batch = self.images[idx]
            labels = self.labels[idx]
            if self.two_views:
                yield (self.transform(batch), self.transform(batch)), labels
            else:
                yield self.transform(batch), labels
