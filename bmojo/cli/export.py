"""`bmojo export`: a bmojo checkpoint as a Hugging Face model folder.

Writes `BMojoForCausalLM` (model.safetensors + config.json, model_type "bmojo") and, when the checkpoint
carries one, its tokenizer as a fast tokenizer with the same ids.  Load both with
`import bmojo.hf.modeling; AutoModelForCausalLM.from_pretrained(OUT); AutoTokenizer.from_pretrained(OUT)`;
`generate()` then decodes with bmojo's bounded state.  Needs the `hf` extra (transformers)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face model folder (transformers)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a bmojo checkpoint folder (bmojo train, bmojo convert)")
    p.add_argument("out", help="the Hugging Face model folder to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that already holds files")
    p.set_defaults(func=run)


def run(args) -> int:
    from bmojo.config import ConfigError

    try:
        from bmojo.hf.export import export
    except ImportError as e:
        raise ConfigError(f"bmojo export needs transformers: pip install 'bmojo[hf]' ({e})") from None
    print(f"wrote {export(args.checkpoint, args.out, overwrite=args.overwrite)}")
    return 0
