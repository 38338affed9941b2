"""mLiT: mixture-of-experts lightweight vision transformers and their MAE pre-training.

Importing mlit imports torch and the model alone; mlit.load reads model files when called,
and timm sees mLiT's models once timm itself is imported (docs/timm.md).
"""

from mlit.inference.timm_hook import register_when_timm_loads
from mlit.model.config import MLiTConfig
from mlit.model.encoder import MLiT, MLiTEncoder
from mlit.model.mae import MaskedAutoEncoder
from mlit.model.registry import CONFIGS, create_mae, create_model, model_config


def load(path):
    """Rebuild the model a .pt checkpoint or .safetensors export holds, from the file alone,
    in eval mode on the CPU (mlit.files.modelfile.load_model)."""
    from mlit.files.modelfile import load_model

    return load_model(path)


register_when_timm_loads()  # timm.create_model("mlit_s", ...) (docs/timm.md)

__all__ = ["MLiT", "MLiTEncoder", "MaskedAutoEncoder", "MLiTConfig", "CONFIGS",
           "create_mae", "create_model", "load", "model_config"]
__version__ = "0.1.0"
