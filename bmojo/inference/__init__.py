from bmojo.inference.generate import generate
from bmojo.inference.sampling import sample_next

__all__ = ["generate", "sample_next"]
