"""bmojo checkpoint -> Hugging Face folder (`bmojo export`): the model as `BMojoForCausalLM` (safetensors +
config.json) and its tokenizer as a `PreTrainedTokenizerFast`, so `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load both: with `trust_remote_code=True` in any interpreter (the folder's
modeling_bmojo.py points at bmojo's classes), or without it after `import bmojo.hf.modeling`."""
from __future__ import annotations

from pathlib import Path

from bmojo.data.text.tokenizer import SEP_ID, BPETokenizer, ByteTokenizer, load_tokenizer
from bmojo.train.checkpoint import load_checkpoint
from bmojo.utils.paths import claim_output, record_output, usual_modes


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
    model, meta = load_checkpoint(checkpoint)  # a bad checkpoint is refused before the folder is touched
    before = claim_output(out, overwrite, "the export folder", known=HF_FILES)
    hf_model = BMojoForCausalLM.from_bmojo(model)
    hf_model.config.auto_map = AUTO_MAP  # trust_remote_code=True finds the classes through REMOTE_CODE
    hf_model.save_pretrained(out)
    (out / REMOTE_CODE).write_text(REMOTE_CODE_TEXT)
    if "tokenizer" in meta:
        hf_tokenizer(load_tokenizer(meta["tokenizer"], meta["_path"])).save_pretrained(out)
    usual_modes(out)
    record_output(out, before)
    return out


# How HF users load custom models: `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` reads
# config.json's auto_map and imports the classes from this file in the folder (which needs bmojo installed).
REMOTE_CODE = "modeling_bmojo.py"
AUTO_MAP = {"AutoConfig": "modeling_bmojo.BMojoConfig", "AutoModelForCausalLM": "modeling_bmojo.BMojoForCausalLM"}
REMOTE_CODE_TEXT = '''"""bmojo's classes for this folder: AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).
They come from the bmojo package (pip install "bmojo[hf]"); this file only points at them."""
from bmojo.hf.modeling import BMojoConfig, BMojoForCausalLM

__all__ = ["BMojoConfig", "BMojoForCausalLM"]
'''

# what an export writes (save_pretrained of the model and the tokenizer): replaced by --overwrite in a folder exported
# before the folder recorded its own files
HF_FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "chat_template.jinja", REMOTE_CODE)
