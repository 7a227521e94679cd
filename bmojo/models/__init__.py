from bmojo.models.lm import BMojoLM, LMOutput, ModelState
from bmojo.models.presets import PRESETS, count_params, preset, size_to_params

__all__ = ["BMojoLM", "LMOutput", "ModelState", "PRESETS", "preset", "size_to_params", "count_params"]
