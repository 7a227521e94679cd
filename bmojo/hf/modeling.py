"""bmojo models as Hugging Face `transformers` classes (the `hf` extra): `BMojoConfig` and
`BMojoForCausalLM`, registered with `AutoConfig` / `AutoModelForCausalLM` under model_type "bmojo".

    import bmojo.hf.modeling  # registers the classes
    model = AutoModelForCausalLM.from_pretrained("runs/hf-model")   # safetensors + config.json
    out = model.generate(ids, max_new_tokens=100, do_sample=True)

`generate` carries bmojo's own decode state between steps (`bmojo_state`), not HF's key/value cache: for
the presets with bounded memory (swa, mamba, bmojo-f, bmojo, and hybrids of windowed and SSM layers) the
state has the same size at every length, so generating 10k tokens does not grow memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from bmojo.config import ModelConfig
from bmojo.models.lm import BMojoLM, ModelState

_HF_MAJOR = int(transformers.__version__.split(".")[0])


class BMojoConfig(PretrainedConfig):
    """A bmojo ModelConfig (`bmojo`, a dict of its fields) in HF's config.json, with HF's standard names
    mirrored for tools that read them."""

    model_type = "bmojo"

    def __init__(self, bmojo: dict | None = None, **kwargs):
        cfg = ModelConfig.from_dict(bmojo) if bmojo else ModelConfig()
        self.bmojo = cfg.to_dict()
        for hf_name, value in (("vocab_size", cfg.vocab_size), ("hidden_size", cfg.d_model),
                               ("num_hidden_layers", cfg.n_layers), ("num_attention_heads", cfg.n_heads),
                               ("max_position_embeddings", cfg.max_seq_len)):
            kwargs[hf_name] = value
        kwargs["tie_word_embeddings"] = cfg.tie_embeddings
        super().__init__(**kwargs)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs) -> "BMojoConfig":
        return cls(bmojo=cfg.to_dict(), **kwargs)

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.bmojo)


@dataclass
class BMojoCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    bmojo_state: ModelState | None = None


class BMojoForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = BMojoConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    if _HF_MAJOR >= 5:
        _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}
    else:
        _tied_weights_keys = ["model.lm_head.weight"]

    def __init__(self, config: BMojoConfig, model: BMojoLM | None = None):
        super().__init__(config)
        self.model = model if model is not None else BMojoLM(config.model_config())
        self.post_init()

    @classmethod
    def from_bmojo(cls, model: BMojoLM) -> "BMojoForCausalLM":
        """Wrap a bmojo model (its weights are shared, not copied)."""
        return cls(BMojoConfig.from_model_config(model.cfg), model=model)

    def _init_weights(self, module):  # bmojo initialises its own modules; loading overwrites them anyway
        pass

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def set_output_embeddings(self, value):
        self.model.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # the decode state is bmojo's own
        return False

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, bmojo_state: ModelState | None = None,
                use_cache: bool | None = None, **kwargs) -> BMojoCausalLMOutput:
        """input_ids (B, T) -> logits (B, T, V).  With `bmojo_state`, continues from it; `use_cache` hands the
        state after the last token back.  Padding is not supported: an attention_mask must be all ones."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("bmojo models take unpadded batches: attention_mask has zeros (generate prompts of "
                             "equal length, or one at a time)")
        if bmojo_state is not None and input_ids.shape[1] == 1:
            logits, state = self.model.step(input_ids[:, 0], bmojo_state)
            logits = logits[:, None]
        else:
            out = self.model(input_ids, bmojo_state, return_state=bool(use_cache) or bmojo_state is not None)
            logits, state = out.logits, out.state
        loss = None
        if labels is not None:  # HF convention: labels are the inputs; predict token t+1 from t, -100 ignored
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return BMojoCausalLMOutput(loss=loss, logits=logits, bmojo_state=state)

    def generate(self, *args, **kwargs):
        cfg = kwargs.get("generation_config") or self.generation_config
        if (kwargs.get("num_beams") or getattr(cfg, "num_beams", 1) or 1) > 1:
            raise ValueError("bmojo models do not support beam search (num_beams > 1): the decode state cannot be "
                             "reordered between beams; use greedy decoding or sampling")
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, bmojo_state=None, use_cache=True,
                                      **kwargs):
        if bmojo_state is not None:  # the state holds everything before the newest token
            input_ids = input_ids[:, bmojo_state.pos:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "bmojo_state": bmojo_state,
                "use_cache": True}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                            num_new_tokens=1, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder,
                                                                   num_new_tokens=num_new_tokens, **kwargs)
        model_kwargs["bmojo_state"] = outputs.bmojo_state
        return model_kwargs


AutoConfig.register("bmojo", BMojoConfig, exist_ok=True)
AutoModelForCausalLM.register(BMojoConfig, BMojoForCausalLM, exist_ok=True)
