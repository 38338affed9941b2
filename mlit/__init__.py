"""mLiT: mixture-of-experts lightweight vision transformers and their MAE pre-training."""

from mlit.files.modelfile import load_model as load
from mlit.inference.timm_models import register as _register_in_timm
from mlit.model.config import MLiTConfig
from mlit.model.encoder import MLiT, MLiTEncoder
from mlit.model.mae import MaskedAutoEncoder
from mlit.model.registry import CONFIGS, create_mae, create_model, model_config

_register_in_timm()  # with timm installed: timm.create_model("mlit_s", ...) (docs/timm.md)

__all__ = ["MLiT", "MLiTEncoder", "MaskedAutoEncoder", "MLiTConfig", "CONFIGS",
           "create_mae", "create_model", "load", "model_config"]
__version__ = "0.1.0"
