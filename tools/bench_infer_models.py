"""The models tools/bench_infer.py measures: mLiT-S/XS/XXS, the dense ViT of each one's shape,
a CIFAR ResNet-56 (He et al. 2016; the paper's Table 7 reference, defined here: no library
ships it) and timm's tiny models when timm is installed; and the --models flag, checked."""

from __future__ import annotations

import torch
from torch import nn

from mlit.errors import BadInput

MLIT = ("mlit_s", "mlit_xs", "mlit_xxs")
DENSE = {f"vit_{name.removeprefix('mlit_')}_dense": name for name in MLIT}  # vit_s_dense, ...
TIMM_MODELS = ("mobilevit_xxs", "deit_tiny_patch16_224")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class ResNet56(nn.Module):
    """The CIFAR ResNet of He et al. (2016): 3 stages of 9 basic blocks, 16/32/64 channels,
    0.85M parameters, 32 x 32 inputs."""

    def __init__(self, num_classes: int = 100):
        super().__init__()
        layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(9):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class LogitsOnly(nn.Module):
    """mLiT returns (logits, L_moe): the logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images)[0]


def build(name: str) -> tuple[nn.Module, int, str]:
    """(model in eval mode, input size, how its ONNX file is made: "mlit", mlit.export's graph
    with the experts output; "lean", the same writer for a dense ViT; "torch", torch.onnx's
    exporter) for a model name."""
    import mlit

    if name in MLIT:
        return mlit.create_model(name, num_classes=100).eval(), 36, "mlit"
    if name in DENSE:  # the same shape with a GELU MLP of the MoE layer's parameters
        model = mlit.create_model(DENSE[name], num_classes=100, ffn="mlp").eval()
        return LogitsOnly(model).eval(), 36, "lean"
    if name == "resnet56":
        return ResNet56().eval(), 32, "torch"
    import timm

    size = 256 if name == "mobilevit_xxs" else 224
    return timm.create_model(name, pretrained=False, num_classes=100).eval(), size, "torch"


def models(quick: bool) -> list[str]:
    if quick:
        return ["mlit_xxs", "resnet56"]
    names = [*MLIT, *DENSE, "resnet56"]
    try:
        import timm  # noqa: F401
        names += list(TIMM_MODELS)
    except ImportError:
        pass
    return names


def model_list(text: str | None, quick: bool) -> list[str]:
    """--models as names this script knows (and can build here), or BadInput."""
    if text is None:
        return models(quick)
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise BadInput(f"--models {text!r}: give model names separated by commas, e.g. "
                       "mlit_xxs,resnet56")
    known = [*MLIT, *DENSE, "resnet56", *TIMM_MODELS]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadInput(f"--models: {unknown[0]} is not a model this benchmark knows "
                       f"({', '.join(known)})")
    if set(names) & set(TIMM_MODELS):
        try:
            import timm  # noqa: F401
        except ImportError:
            raise BadInput(f"--models: {', '.join(sorted(set(names) & set(TIMM_MODELS)))} "
                           "need timm: pip install timm") from None
    return names
