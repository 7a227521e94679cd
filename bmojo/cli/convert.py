"""`bmojo convert`: a Hugging Face model folder (config.json + safetensors) as a bmojo checkpoint.

MambaForCausalLM -> the `mamba` preset; LlamaForCausalLM -> `transformer`; MistralForCausalLM -> `swa` with
its sliding window (`--window none` for full attention).  The converted model computes the source's logits
(tests/hf/test_convert.py checks max abs error <= 1e-4 in fp32).  Only safetensors weights are read; a folder
with only pytorch_model.bin is refused, since loading it would unpickle code.  Neither `transformers` nor a
network connection is needed."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="import a Hugging Face Mamba / Llama / Mistral checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a Hugging Face model folder (config.json and model.safetensors or shards)")
    p.add_argument("out", help="the bmojo checkpoint folder to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a folder that already holds files")
    p.add_argument("--window", default="auto",
                   help="attention window: auto (Mistral's sliding_window, else full), none, or an integer")
    p.set_defaults(func=run)


def run(args) -> int:
    from bmojo.config import ConfigError
    from bmojo.hf.convert import convert
    from bmojo.utils.paths import refuse_filled

    w = args.window.lower()
    if w in ("auto", "none"):
        window = "auto" if w == "auto" else None
    elif w.isdigit() and int(w) > 0:
        window = int(w)
    else:
        raise ConfigError(f"--window {args.window!r}: expected auto, none or a positive integer")
    refuse_filled(args.out, args.overwrite, "the checkpoint folder")
    path = convert(args.src, args.out, window)
    print(f"wrote {path}")
    return 0
