"""Checkpoints: safetensors for tensors, JSON for everything else; nothing is ever unpickled.

A checkpoint is a folder:
    config.json            {"format": "bmojo-checkpoint", "version": 1, "model": {...}, "step": N, "sha256":
                           {file: its SHA-256, for every other file}, ...}; each file is verified when it is read
    model.safetensors      the model's parameters (tied weights stored once)
    optimizer.safetensors  AdamW moments per parameter index, and the torch RNG state (resumable runs)
It is written to a temporary folder and renamed into place, so a crash never leaves a half-written
checkpoint where the last good one was.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from bmojo.config import ModelConfig
from bmojo.utils.jsonfile import read_json
from bmojo.utils.paths import usual_modes

FORMAT, VERSION = "bmojo-checkpoint", 1


class CheckpointError(ValueError):
    """A checkpoint folder is missing, corrupt, foreign, or does not fit the model."""


crash_hook = None  # tests set a callable(point): it may end the process at a named point of a write


def _reached(point: str) -> None:
    if crash_hook is not None:
        crash_hook(point)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    tensors, groups = {}, []
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for k, v in opt.state.get(p, {}).items():
            tensors[f"state.{i}.{k}"] = v.detach().reshape(v.shape).contiguous().cpu() if torch.is_tensor(v) \
                else torch.tensor(v)
    for g in opt.param_groups:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"})
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors, {"param_groups": groups, "n_params": len(params)}


def save_checkpoint(path: str | Path, model, meta: dict, optimizer: torch.optim.Optimizer | None = None,
                    files: dict[str, str] | None = None) -> Path:
    """Write model (+ optimizer, + `files`: name -> text, e.g. a tokenizer) and meta to `path` atomically
    (temp folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    _reached("model")
    info = {"format": FORMAT, "version": VERSION, "model": model.cfg.to_dict(), **meta}
    if optimizer is not None:
        tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        info["optimizer"] = opt_meta
        _reached("optimizer")
    for name, text in (files or {}).items():
        if Path(name).name != name or name in ("config.json", "model.safetensors", "optimizer.safetensors"):
            raise ValueError(f"checkpoint file name {name!r}: must be a plain file name of its own")
        (tmp / name).write_text(text)
        _reached(f"file:{name}")
    info["sha256"] = {f.name: file_sha256(f) for f in sorted(tmp.iterdir())}
    (tmp / "config.json").write_text(json.dumps(info, indent=2))
    _reached("config")
    usual_modes(tmp)  # safetensors writes 0600; a checkpoint is as readable as any file made here
    for f in tmp.iterdir():  # flush file contents before the rename makes them visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _reached("fsynced")
    if path.exists():
        _carry_foreign(path, tmp)
        shutil.rmtree(old, ignore_errors=True)
        _reached("old_removed")
        path.rename(old)
        _reached("moved_to_old")
    tmp.rename(path)
    _reached("renamed")
    shutil.rmtree(old, ignore_errors=True)
    return path


def _carry_foreign(path: Path, tmp: Path) -> None:
    """Move into the new checkpoint `tmp` whatever in the old one `path` no checkpoint wrote (a user's file), so that
    replacing a checkpoint never deletes it; the old checkpoint's own files (listed in its config.json, or by name
    for one that lists none) go with it."""
    try:
        own = set(json.loads((path / "config.json").read_text()).get("sha256") or {})
    except (OSError, ValueError, AttributeError):
        own = set()
    own |= {"config.json", "model.safetensors", "optimizer.safetensors", "tokenizer.json"}
    for p in list(path.iterdir()):
        if p.name not in own and not p.name.startswith("hf_") and not (tmp / p.name).exists():
            p.rename(tmp / p.name)


# every point of save_checkpoint where a crash test ends the process (file: points are per extra file)
CRASH_POINTS = ("model", "optimizer", "config", "fsynced", "old_removed", "moved_to_old", "renamed")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def check_file(meta: dict, name: str) -> str:
    """Verify a checkpoint file against the SHA-256 its config.json records -> the digest (computed when an older
    checkpoint recorded none).  A mismatch is a CheckpointError naming the file."""
    path = Path(meta["_path"]) / name
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    digest = file_sha256(path)
    want = (meta.get("sha256") or {}).get(name)
    if want is not None and digest != want:
        raise CheckpointError(f"{path}: SHA-256 {digest[:16]}... does not match the {want[:16]}... recorded in "
                              f"{Path(meta['_path']) / 'config.json'}: the file was damaged or replaced after it "
                              "was saved")
    return digest


def has_checkpoint(path: str | Path) -> bool:
    """A checkpoint folder is at `path`, or its previous copy (a crash between save_checkpoint's renames)."""
    path = Path(path)
    return path.is_dir() or path.with_name(f".{path.name}.old").is_dir()


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        old = path.with_name(f".{path.name}.old")
        if old.is_dir():  # a crash between the two renames of save_checkpoint
            path = old
        else:
            raise CheckpointError(f"{path}: no checkpoint folder here")
    cfg_file = path / "config.json"
    info = read_json(cfg_file, CheckpointError, "bmojo checkpoint")
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file}: format is {info.get('format')!r}, "
                              f"expected {FORMAT!r} (a checkpoint of another tool?)")
    if info.get("version") != VERSION:
        raise CheckpointError(f"{cfg_file}: checkpoint version {info.get('version')!r}, this bmojo reads {VERSION}")
    info["_path"] = str(path)
    return info


def load_checkpoint(path: str | Path, device="cpu", overrides: dict | None = None):
    """-> (model, meta).  Builds the model from the stored config (with `overrides`: ModelConfig fields that keep
    the weights' shapes, e.g. memory_size or memory_decay at inference) and loads its weights."""
    from bmojo.models.lm import BMojoLM

    info = read_meta(path)
    path = Path(info["_path"])
    cfg = ModelConfig.from_dict({**info["model"], **(overrides or {})})
    info["weights_sha256"] = check_file(info, "model.safetensors")
    model = BMojoLM(cfg).to(device)
    load_weights(model, path / "model.safetensors")
    return model, info


def lm_tokenizer(meta: dict):
    """-> (tokenizer, how `--tokenizer` names it: "byte" or its file) of the checkpoint whose `read_meta` is `meta`:
    the one `bmojo train` saved, or the Hugging Face tokenizer `bmojo convert` copied beside a converted model.  A
    clear error if it carries none."""
    from bmojo.config import ConfigError
    from bmojo.data.text.tokenizer import BPE_FILE, FileTokenizer, load_tokenizer

    path = Path(meta["_path"])
    if "tokenizer" in meta:
        for name in sorted(meta.get("sha256") or {}):
            if name not in ("model.safetensors", "optimizer.safetensors"):  # the tokenizer's files
                check_file(meta, name)
        tok = load_tokenizer(meta["tokenizer"], path)
        return tok, "byte" if tok.kind == "byte" else str(path / BPE_FILE)
    src = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    if "hf_model_type" not in src:
        raise ConfigError(f"{path}: the checkpoint has no tokenizer (trained on a synthetic task?)")
    if not (path / "hf_tokenizer.json").is_file():
        copied = sorted(p.name for p in path.glob("hf_*"))
        raise ConfigError(f"{path}: converted from a Hugging Face {src['hf_model_type']} model ({src.get('path')})"
                          + (f"; its tokenizer files were copied as {copied}, which bmojo does not read (it needs a "
                             "tokenizer.json)" if copied else " that came without a tokenizer: its folder had none "
                             "of tokenizer.json, tokenizer_config.json"))
    tok = FileTokenizer.from_path(path / "hf_tokenizer.json")  # the one it came with
    if tok.vocab_size > meta["model"]["vocab_size"]:
        raise ConfigError(f"{path}: its tokenizer has {tok.vocab_size} tokens, the model {meta['model']['vocab_size']}")
    return tok, str(path / "hf_tokenizer.json")


def load_lm_checkpoint(path: str | Path, device="cpu"):
    """-> (model, meta, tokenizer) of a language-model checkpoint; a clear error if it carries no tokenizer."""
    model, meta = load_checkpoint(path, device)
    return model, meta, lm_tokenizer(meta)[0]


def load_weights(model, file: Path) -> None:
    if not file.is_file():
        raise CheckpointError(f"{file}: weights file is missing")
    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    except RuntimeError as e:  # shape mismatch
        raise CheckpointError(f"{file}: tensors do not fit the model ({e})") from None
    if missing or unexpected:
        raise CheckpointError(f"{file}: missing tensors {sorted(missing)[:5]}, unexpected tensors "
                              f"{sorted(unexpected)[:5]}")


def read_optimizer(path: str | Path, meta: dict, names: list[str]) -> dict:
    """A checkpoint's optimizer state, name-keyed (the layout of torch.distributed.checkpoint): `names` are the
    parameters in the optimizer's order (bmojo.train.optim.group_names).  Restores the torch RNG state too."""
    file = Path(path) / "optimizer.safetensors"
    check_file({**meta, "_path": str(path)}, "optimizer.safetensors")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    if meta["optimizer"]["n_params"] != len(names):
        raise CheckpointError(f"{file}: optimizer state for {meta['optimizer']['n_params']} parameters, "
                              f"the model has {len(names)}")
    state: dict[str, dict] = {}
    for key, t in tensors.items():
        if key.startswith("state."):
            _, i, name = key.split(".", 2)
            state.setdefault(names[int(i)], {})[name] = t
    torch.set_rng_state(tensors["rng.torch"])
    return {"state": state, "param_groups": [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()}
                                              for g in meta["optimizer"]["param_groups"]]}


def load_optimizer(optimizer: torch.optim.Optimizer, path: str | Path, meta: dict) -> None:
    """Into a single-process optimizer (parameters in the saved order)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved = read_optimizer(path, meta, [str(i) for i in range(len(params))])
    for g, hyper in zip(optimizer.param_groups, saved["param_groups"]):
        g.update(hyper)
    for i, s in saved["state"].items():
        optimizer.state[params[int(i)]].update({k: t.to(params[int(i)].device) for k, t in s.items()})
