from bmojo.inference.compiled import compile_step
from bmojo.inference.generate import generate
from bmojo.inference.sampling import sample_next

__all__ = ["compile_step", "generate", "sample_next"]
