"""Import Hugging Face checkpoints as bmojo models: `MambaForCausalLM` -> the `mamba` preset,
`LlamaForCausalLM` -> `transformer`, `MistralForCausalLM` -> `swa` (its sliding window) or `transformer`.

bmojo's layers use HF's parameter names and maths, so the import is a renaming: every source tensor is
accounted for (a tensor left over, missing or of the wrong shape is an error that names it), and the
converted model's logits equal the source's (tests/hf/test_convert.py).  Only `config.json` and safetensors
weights are read, with the standard library and `safetensors`: this needs neither `transformers` nor
unpickling (a folder with only `pytorch_model.bin` is refused).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from bmojo.config import ConfigError, ModelConfig
from bmojo.models.presets import preset
from bmojo.train.checkpoint import CheckpointError
from bmojo.utils.jsonfile import read_json

SUPPORTED = ("mamba", "llama", "mistral")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "tf_model.h5")


def read_hf_dir(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json as a dict, every tensor of the safetensors weights, single file or sharded)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder (expected a Hugging Face model folder with config.json)")
    hf = read_json(path / "config.json", CheckpointError, "Hugging Face model folder")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, CheckpointError, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no weight_map; not a safetensors index")
        shards = sorted(set(map(str, weight_map.values())))
        escaping = [s for s in shards if Path(s).name != s]
        if escaping:
            raise CheckpointError(f"{index}: shard names must be plain file names in the folder, got {escaping[:3]}")
        files = [path / s for s in shards]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        pickled = [p for p in PICKLE_FILES if (path / p).exists()]
        why = (f"it has only {pickled}, which bmojo does not read: loading them would unpickle code. Convert them "
               "to safetensors first (`save_pretrained(..., safe_serialization=True)`)") if pickled else \
            "no model.safetensors or model.safetensors.index.json"
        raise CheckpointError(f"{path}: no safetensors weights; {why}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: weights shard is missing")
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    tensors[k] = st.get_tensor(k)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None
    return hf, tensors


def _need(hf: dict, key: str, arch: str):
    if hf.get(key) is not None:
        return hf[key]
    raise CheckpointError(f"config.json of a {arch} model has no {key!r}")


def _refuse(arch: str, what: str) -> None:
    raise CheckpointError(f"unsupported {arch} checkpoint: {what}")


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        _refuse(hf.get("model_type", "?"), f"RoPE scaling {kind!r} (only plain RoPE is implemented)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def mamba_config(hf: dict) -> ModelConfig:
    arch = "mamba"
    D = _need(hf, "hidden_size", arch)
    if hf.get("use_bias", False):
        _refuse(arch, "use_bias=true (bias on in_proj/out_proj)")
    if hf.get("hidden_act", "silu") != "silu":
        _refuse(arch, f"hidden_act={hf['hidden_act']!r}")
    rank = hf.get("time_step_rank", "auto")
    return preset("mamba", vocab_size=_need(hf, "vocab_size", arch), d_model=D,
                  n_layers=_need(hf, "num_hidden_layers", arch), d_state=_need(hf, "state_size", arch),
                  d_conv=_need(hf, "conv_kernel", arch), expand=_need(hf, "expand", arch),
                  dt_rank=None if rank == "auto" else int(rank), norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                  tie_embeddings=bool(hf.get("tie_word_embeddings", True)), n_heads=1, impl="auto")


def llama_config(hf: dict, window: int | None) -> ModelConfig:
    arch = hf.get("model_type", "llama")
    D, H = _need(hf, "hidden_size", arch), _need(hf, "num_attention_heads", arch)
    if hf.get("head_dim") not in (None, D // H):
        _refuse(arch, f"head_dim={hf['head_dim']} differs from hidden_size/num_attention_heads={D // H}")
    if hf.get("attention_bias", False) or hf.get("mlp_bias", False):
        _refuse(arch, "attention_bias or mlp_bias (bmojo's projections have no bias)")
    if hf.get("hidden_act", "silu") != "silu":
        _refuse(arch, f"hidden_act={hf['hidden_act']!r} (bmojo's MLP is SwiGLU)")
    kw = dict(vocab_size=_need(hf, "vocab_size", arch), d_model=D, n_layers=_need(hf, "num_hidden_layers", arch),
              n_heads=H, n_kv_heads=hf.get("num_key_value_heads") or H, d_ff=_need(hf, "intermediate_size", arch),
              rope_theta=_rope_theta(hf), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
              max_seq_len=int(hf.get("max_position_embeddings", 4096)), attn_conv=False,
              tie_embeddings=bool(hf.get("tie_word_embeddings", False)), impl="auto")
    if window:
        return preset("swa", window=int(window), chunk=min(int(window), 64), **kw)
    return preset("transformer", **kw)


def _mamba_names(n_layers: int) -> dict[str, str]:
    """bmojo name -> HF name."""
    names = {"embed.weight": "backbone.embeddings.weight", "norm_f.weight": "backbone.norm_f.weight",
             "lm_head.weight": "lm_head.weight"}
    for i in range(n_layers):
        names[f"layers.{i}.norm.weight"] = f"backbone.layers.{i}.norm.weight"
        for p in ("A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                  "dt_proj.weight", "dt_proj.bias", "out_proj.weight"):
            names[f"layers.{i}.mixer.{p}"] = f"backbone.layers.{i}.mixer.{p}"
    return names


def _llama_names(n_layers: int) -> dict[str, str]:
    names = {"embed.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
    for i in range(n_layers):
        src = f"model.layers.{i}"
        names[f"layers.{i}.norm.weight"] = f"{src}.input_layernorm.weight"
        names[f"layers.{i}.mlp_norm.weight"] = f"{src}.post_attention_layernorm.weight"
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names[f"layers.{i}.mixer.{p}.weight"] = f"{src}.self_attn.{p}.weight"
        for p in ("gate_proj", "up_proj", "down_proj"):
            names[f"layers.{i}.mlp.{p}.weight"] = f"{src}.mlp.{p}.weight"
    return names


# tensors a source may hold that carry nothing a model computes with (buffers kept by older HF versions)
IGNORABLE = re.compile(r".*\.rotary_emb\.inv_freq$")


def _config_and_names(hf: dict, arch: str, window):
    """The bmojo config an HF config maps to, and bmojo's tensor names -> the source's."""
    try:
        if arch == "mamba":
            cfg = mamba_config(hf)
            return cfg, _mamba_names(cfg.n_layers)
        w = hf.get("sliding_window") if (window == "auto" and arch == "mistral") else \
            (None if window == "auto" else window)
        cfg = llama_config(hf, w)
        return cfg, _llama_names(cfg.n_layers)
    except ConfigError as e:
        raise CheckpointError(f"{arch} config.json does not map to a valid bmojo config: {e}") from None


def convert_state(hf: dict, tensors: dict[str, torch.Tensor], window: int | str | None = "auto"):
    """(ModelConfig, bmojo state dict) from an HF config and its tensors.  window: for Mistral, "auto" takes
    the config's sliding_window (swa preset; none -> transformer), None forces full attention."""
    arch = hf.get("model_type")
    if arch == "bmojo":  # bmojo's own export (BMojoForCausalLM): its config and names are bmojo's, under "model."
        return _bmojo_state(hf, tensors)
    if arch not in SUPPORTED:
        names = hf.get("architectures") or []
        raise CheckpointError(f"unsupported architecture: model_type={arch!r} {names}; bmojo converts "
                              f"{list(SUPPORTED)} (MambaForCausalLM, LlamaForCausalLM, MistralForCausalLM)")
    cfg, names = _config_and_names(hf, arch, window)
    from bmojo.models.lm import BMojoLM

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in BMojoLM(cfg).state_dict().items()}
    if cfg.tie_embeddings:
        names.pop("lm_head.weight")  # tied: the embedding serves both (a stored copy must equal it)
    state, used = {}, set()
    zeros = []  # bmojo tensors the source leaves out because they are zero by its config
    if arch == "mamba" and not hf.get("use_conv_bias", True):  # no conv bias: exactly a zero bias
        zeros = [dst for dst in names if dst.endswith("conv1d.bias")]
    for dst in zeros:
        state[dst] = torch.zeros(shapes[dst])
        names.pop(dst)
    missing = [src for dst, src in names.items() if src not in tensors]
    if missing:
        raise CheckpointError(f"{arch} checkpoint is missing tensors {missing[:5]}"
                              + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    for dst, src in names.items():
        t = tensors[src]
        if tuple(t.shape) != tuple(shapes[dst]):
            raise CheckpointError(f"{arch} tensor {src}: shape {tuple(t.shape)}, but config.json implies "
                                  f"{tuple(shapes[dst])} for bmojo's {dst}")
        state[dst] = t.to(torch.float32)
        used.add(src)
    if cfg.tie_embeddings and "lm_head.weight" in tensors:
        if not torch.equal(tensors["lm_head.weight"].float(), state["embed.weight"]):
            raise CheckpointError(f"{arch}: tie_word_embeddings is true but lm_head.weight differs from the embedding")
        used.add("lm_head.weight")
    left = sorted(k for k in tensors if k not in used and not IGNORABLE.match(k))
    if left:
        raise CheckpointError(f"{arch} checkpoint has tensors bmojo has no place for: {left[:5]}"
                              + (f" and {len(left) - 5} more" if len(left) > 5 else ""))
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    return cfg, state


def _bmojo_state(hf: dict, tensors: dict[str, torch.Tensor]):
    """(ModelConfig, state dict) of a `bmojo export` folder: the round trip back to a bmojo checkpoint."""
    from bmojo.models.lm import BMojoLM

    try:
        cfg = ModelConfig.from_dict(hf.get("bmojo") or {})
    except ConfigError as e:
        raise CheckpointError(f"bmojo config.json: its `bmojo` field is not a valid bmojo config: {e}") from None
    state = {k.removeprefix("model."): v.to(torch.float32) for k, v in tensors.items()}
    with torch.device("meta"):
        want = BMojoLM(cfg).state_dict()
    if cfg.tie_embeddings and "lm_head.weight" not in state and "embed.weight" in state:
        state["lm_head.weight"] = state["embed.weight"]
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    bad = [k for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or extra or bad:
        raise CheckpointError(f"bmojo export: tensors missing {missing[:5]}, unexpected {extra[:5]}, misshapen "
                              f"{bad[:5]}")
    return cfg, state


def load_hf(path: str | Path, window: int | str | None = "auto"):
    """An HF model folder as a bmojo model (fp32, eval mode)."""
    from bmojo.models.lm import BMojoLM

    hf, tensors = read_hf_dir(path)
    cfg, state = convert_state(hf, tensors, window)
    model = BMojoLM(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def convert(src: str | Path, out: str | Path, window: int | str | None = "auto") -> Path:
    """Write a bmojo checkpoint (safetensors + JSON) converted from the HF folder `src`; the HF tokenizer
    files, when present, are copied beside it."""
    from bmojo.train.checkpoint import save_checkpoint

    model = load_hf(src, window)
    hf = read_json(Path(src) / "config.json", CheckpointError, "Hugging Face model folder")
    path = save_checkpoint(out, model, {"source": {"hf_model_type": hf.get("model_type"),
                                                   "hf_architectures": hf.get("architectures"),
                                                   "path": str(Path(src).resolve())}})
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, path / f"hf_{name}")
    return path
