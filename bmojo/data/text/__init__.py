"""Text data: corpora prepared into memory-mapped token files, tokenizers, and the built-in Zen of Python."""
from bmojo.data.text.zen import decode_bytes, encode_bytes, random_windows, zen_of_python

__all__ = ["zen_of_python", "encode_bytes", "decode_bytes", "random_windows"]
