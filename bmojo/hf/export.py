"""bmojo checkpoint -> Hugging Face folder (`bmojo export`): the model as `BMojoForCausalLM` (safetensors +
config.json) and its tokenizer as a `PreTrainedTokenizerFast`, so `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load both (after `import bmojo.hf.modeling`)."""
from __future__ import annotations

from pathlib import Path

from bmojo.data.text.tokenizer import SEP_ID, BPETokenizer, ByteTokenizer, load_tokenizer
from bmojo.train.checkpoint import load_checkpoint
from bmojo.utils.paths import refuse_filled, usual_modes


def hf_tokenizer(tok: ByteTokenizer | BPETokenizer):
    """Our tokenizer as a transformers fast tokenizer with the same ids; the document separator (id 0) is its
    end-of-sequence token."""
    from transformers import PreTrainedTokenizerFast

    obj = tok.tok if isinstance(tok, BPETokenizer) else tok.as_tokenizers()
    sep = obj.id_to_token(SEP_ID)
    return PreTrainedTokenizerFast(tokenizer_object=obj, eos_token=sep, bos_token=sep, pad_token=sep,
                                   clean_up_tokenization_spaces=False)


def export(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the checkpoint as an HF folder `out`; a folder that holds files is refused unless `overwrite`."""
    from bmojo.hf.modeling import BMojoForCausalLM

    out = Path(out)
    refuse_filled(out, overwrite, "the export folder")
    model, meta = load_checkpoint(checkpoint)
    BMojoForCausalLM.from_bmojo(model).save_pretrained(out)
    if "tokenizer" in meta:
        hf_tokenizer(load_tokenizer(meta["tokenizer"], meta["_path"])).save_pretrained(out)
    usual_modes(out)
    return out
