"""The device pipeline against torchvision's: the same statistics of crops, flips and
erasing, exact epochs, and training through it (all on the CPU)."""

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image
from torchvision.transforms import v2

from mlit.data.device import DeviceLoader, random_erasing, sample_boxes
from mlit.data.transforms import train_transform
from mlit.recipe.schema import Augment

N = 1500


def ramp_image() -> np.ndarray:
    """Red rises left to right, green top to bottom: a crop's box and flip can be read back."""
    x = np.linspace(0, 255, 32)
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = x[None, :].round()
    img[..., 1] = x[:, None].round()
    img[..., 2] = 128
    return img


def box_statistics(batch: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image: crop centre (x, y), width and height as seen through the ramps, flipped."""
    red, green = batch[:, 0], batch[:, 1]
    return {"cx": red.mean((1, 2)).numpy(), "cy": green.mean((1, 2)).numpy(),
            "w": (red[:, :, -1] - red[:, :, 0]).abs().mean(1).numpy(),
            "h": (green[:, -1, :] - green[:, 0, :]).mean(1).numpy(),
            "flipped": (red[:, :, -1] < red[:, :, 0]).float().mean(1).numpy() > 0.5}


@pytest.mark.parametrize("aug", [Augment(crop_scale=(0.2, 1.0)),
                                 Augment(crop_scale=(0.08, 0.5), hflip=False),
                                 Augment(random_resized_crop=False)])
def test_crops_and_flips_have_torchvision_statistics(aug):
    torch.manual_seed(0)
    img = ramp_image()
    cpu = train_transform(aug, 36, (0, 0, 0), (1, 1, 1))
    pil = Image.fromarray(img)
    reference = torch.stack([cpu(pil) for _ in range(N)])
    images = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).expand(N, -1, -1, -1)
    loader = DeviceLoader(images.contiguous(), torch.zeros(N, dtype=torch.long), N, 36,
                          (0, 0, 0), (1, 1, 1), aug)
    loader.generator.manual_seed(1)
    ours, _ = next(iter(loader))
    # on the reference's 8-bit levels (torchvision resizes uint8 images; we do not round)
    a, b = box_statistics(reference), box_statistics((ours * 255).round() / 255)
    for key in ("cx", "cy", "w", "h"):
        if np.ptp(a[key]) < 1e-3:  # no crop: a constant, compare it directly
            assert np.allclose(a[key], b[key], atol=0.02), key
            continue
        p = scipy.stats.ks_2samp(a[key], b[key]).pvalue
        assert p > 1e-3, (key, p, a[key].mean(), b[key].mean())
    assert abs(a["flipped"].mean() - b["flipped"].mean()) < 0.06
    assert b["flipped"].mean() == (0.0 if not aug.hflip else pytest.approx(0.5, abs=0.06))


def test_box_sampler_matches_torchvision_get_params():
    torch.manual_seed(0)
    ref = np.array([v2.RandomResizedCrop.get_params(torch.empty(3, 24, 40), [0.1, 0.9],
                                                    [3 / 4, 4 / 3]) for _ in range(N)])
    top, left, h, w = (t.numpy() for t in sample_boxes(
        N, 24, 40, (0.1, 0.9), (3 / 4, 4 / 3), torch.Generator().manual_seed(0), "cpu"))
    for ours, theirs in ((top, ref[:, 0]), (left, ref[:, 1]), (h, ref[:, 2]), (w, ref[:, 3])):
        assert scipy.stats.ks_2samp(ours, theirs).pvalue > 1e-3
    assert (top + h <= 24).all() and (left + w <= 40).all() and (h >= 1).all()


def test_random_erasing_matches_torchvision():
    torch.manual_seed(0)
    x = torch.ones(N, 3, 36, 36)
    ref = torch.stack([v2.RandomErasing(p=0.25)(img) for img in x])
    ours = random_erasing(x, 0.25, torch.Generator().manual_seed(0))
    ref_area = (ref[:, 0] == 0).float().mean((1, 2)).numpy()
    our_area = (ours[:, 0] == 0).float().mean((1, 2)).numpy()
    assert abs((ref_area > 0).mean() - (our_area > 0).mean()) < 0.05
    assert scipy.stats.ks_2samp(ref_area[ref_area > 0], our_area[our_area > 0]).pvalue > 1e-3


def test_an_epoch_visits_every_image_once_and_reseeding_repeats_it():
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 3, 8, 8)
    labels = torch.arange(50)
    loader = DeviceLoader(images.contiguous(), labels, 16, 8, (0,) * 3, (1 / 255,) * 3,
                          Augment(auto_augment="cifar10", random_erasing=0.5))
    loader.generator.manual_seed(3)
    first = [(x.clone(), y.clone()) for x, y in loader]
    assert len(first) == len(loader) == 3  # drop_last
    seen = torch.cat([y for _, y in first])
    assert len(set(seen.tolist())) == 48
    loader.generator.manual_seed(3)
    torch.manual_seed(0)
    again = list(loader)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert first[0][0].shape == (16, 3, 8, 8) and first[0][0].dtype == torch.float32


def test_two_views_differ():
    img = torch.from_numpy(ramp_image()).permute(2, 0, 1).unsqueeze(0).expand(8, -1, -1, -1)
    loader = DeviceLoader(img.contiguous(), torch.zeros(8, dtype=torch.long), 8, 36, (0,) * 3,
                          (1,) * 3, Augment(color_jitter=0.5, grayscale=0.2), two_views=True)
    (a, b), _ = next(iter(loader))
    assert a.shape == b.shape == (8, 3, 36, 36) and not torch.equal(a, b)


class FlowerLike:
    """Large images of two sizes and aspect ratios, as PIL images (Flowers102's form, with its
    `transform` attribute): red rises left to right, green top to bottom (the crop box can be
    read back), blue has vertical stripes 12 px apart (detail that a small stored copy loses)."""

    def __init__(self, n: int, transform=None):
        self.n, self.transform = n, transform

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        H, W = (240, 320) if i % 2 else (300, 200)
        img = np.zeros((H, W, 3), np.uint8)
        img[..., 0] = np.linspace(0, 255, W)[None, :].round()
        img[..., 1] = np.linspace(0, 255, H)[:, None].round()
        img[..., 2] = np.where((np.arange(W) // 6) % 2, 255, 0)[None, :]
        pil = Image.fromarray(img)
        return (self.transform(pil) if self.transform else pil), i % 2


def stripe_energy(batch: torch.Tensor) -> np.ndarray:
    """Mean absolute difference of neighbouring blue pixels: how much of the stripes a crop
    kept after its resize to 36 px."""
    blue = batch[:, 2]
    return (blue[:, :, 1:] - blue[:, :, :-1]).abs().mean((1, 2)).numpy()


def test_large_images_of_many_sizes_crop_as_on_the_cpu():
    """Flowers102 on the device pipeline: crops drawn in each image's frame, at full
    resolution, have the CPU pipeline's boxes, flips and detail; the 36 px copy the pipeline
    used to keep, or a copy at 144 px, loses detail (and a test of it fails)."""
    from mlit.data.device import dataset_to_ragged, dataset_to_uint8

    torch.manual_seed(0)
    n, aug = 600, Augment(crop_scale=(0.2, 1.0))
    cpu = train_transform(aug, 36, (0, 0, 0), (1, 1, 1))
    reference = torch.stack([FlowerLike(n, cpu)[i][0] for i in range(n)])
    images, labels = dataset_to_ragged(FlowerLike(n))
    assert images[0].shape == (3, 300, 200) and images[1].shape == (3, 240, 320)
    loader = DeviceLoader(images, labels, n, 36, (0, 0, 0), (1, 1, 1), aug)
    loader.generator.manual_seed(1)
    ours, _ = next(iter(loader))
    assert ours.shape == reference.shape == (n, 3, 36, 36)
    a, b = box_statistics(reference), box_statistics(ours)
    for key in ("cx", "cy", "w", "h"):
        p = scipy.stats.ks_2samp(a[key], b[key]).pvalue
        assert p > 1e-3, (key, p, a[key].mean(), b[key].mean())
    assert abs(a["flipped"].mean() - b["flipped"].mean()) < 0.08
    detail = scipy.stats.ks_2samp(stripe_energy(reference), stripe_energy(ours)).pvalue
    assert detail > 1e-3, (detail, stripe_energy(reference).mean(), stripe_energy(ours).mean())
    # the former storage, every image resized to 36 x 36 once, and a 144 px copy: the crops
    # taken from them lose the stripes that the full-resolution crops keep
    small, small_labels = dataset_to_uint8(FlowerLike(n), 36)
    smaller = [torch.nn.functional.interpolate(im[None].float(), scale_factor=144 / min(
        im.shape[1:]), mode="bilinear", antialias=True)[0].round().byte() for im in images]
    for stored in (small, smaller):
        other = DeviceLoader(stored, labels, n, 36, (0, 0, 0), (1, 1, 1), aug)
        other.generator.manual_seed(1)
        thumbnails, _ = next(iter(other))
        assert scipy.stats.ks_2samp(stripe_energy(reference),
                                    stripe_energy(thumbnails)).pvalue < 1e-6


def test_a_ragged_split_without_crops_is_the_resized_image():
    from mlit.data.device import dataset_to_ragged

    images, labels = dataset_to_ragged(FlowerLike(4))
    loader = DeviceLoader(images, labels, 4, 36, (0, 0, 0), (1 / 255,) * 3,
                          Augment(random_resized_crop=False, hflip=False), shuffle=False)
    ours, y = next(iter(loader))
    cpu = train_transform(Augment(random_resized_crop=False, hflip=False), 36, (0, 0, 0),
                          (1 / 255,) * 3)
    expected = torch.stack([FlowerLike(4, cpu)[i][0] for i in range(4)])
    assert (ours - expected).abs().max() <= 1.0  # PIL's resize and torch's, within a level
    assert y.tolist() == [0, 1, 0, 1]
