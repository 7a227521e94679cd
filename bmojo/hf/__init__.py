"""Hugging Face interop: weight import from HF checkpoints (`convert`, no `transformers` needed)."""
from bmojo.hf.convert import convert, convert_state, load_hf, read_hf_dir

__all__ = ["convert", "convert_state", "load_hf", "read_hf_dir"]
