"""mLiT: mixture-of-experts lightweight vision transformers and their MAE pre-training."""

from mlit.encoder import MLiT, MLiTEncoder
from mlit.mae import MaskedAutoEncoder
from mlit.model_config import MLiTConfig
from mlit.modelfile import load_model as load
from mlit.registry import CONFIGS, create_mae, create_model, model_config

__all__ = ["MLiT", "MLiTEncoder", "MaskedAutoEncoder", "MLiTConfig", "CONFIGS",
           "create_mae", "create_model", "load", "model_config"]
__version__ = "0.1.0"
