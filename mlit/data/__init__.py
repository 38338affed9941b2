"""Data (docs/datasets.md): the datasets a recipe names, checked when they load, and the two
pipelines that feed a stage.

- catalogue.py: what each dataset is (classes, statistics, size) and how its splits build;
- datasets.py: torchvision's CIFAR, SVHN and Flowers102 with checks;
- digits.py: scikit-learn's bundled digits, split once and kept in the user's cache;
- folder.py: your own images in ImageFolder layout; images.py: decoding one of them;
- errors.py: a dataset that cannot be used, in one line;
- transforms.py: the torchvision pipeline's augmentation;
- device.py: the device pipeline (uint8 split on the GPU, batched augmentation);
- loaders.py: the loaders a stage trains and evaluates with, one order per (seed, epoch);
- synthetic.py: files in CIFAR's on-disk format, for tests and the GPU check.
"""
