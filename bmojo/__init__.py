"""bmojo: B'MOJO sequence models with eidetic and fading memory, and the Transformer, Mamba and hybrid
special cases of the same model class."""
from bmojo.config import ConfigError, ModelConfig
from bmojo.inference import generate
from bmojo.models import PRESETS, BMojoLM, LMOutput, ModelState, count_params, preset, size_to_params
from bmojo.train.checkpoint import load_checkpoint

__version__ = "0.1.0"
__all__ = ["ModelConfig", "ConfigError", "BMojoLM", "LMOutput", "ModelState", "PRESETS", "preset",
           "size_to_params", "count_params", "generate", "load_checkpoint", "__version__"]
