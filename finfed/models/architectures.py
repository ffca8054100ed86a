"""What finfed needs to know about a backbone's architecture: encoder or decoder, pooling, LoRA targets.

Classification runs on any ``AutoModel`` backbone: encoders (BERT, RoBERTa, DeBERTa-v2,
DistilBERT, ELECTRA, XLM-RoBERTa, ModernBERT, MPNet, ...) and decoder-only models (GPT-2, Llama,
Qwen2, Mistral, ...). LoRA's default targets come from peft's own table of attention
projections per architecture, with the few it lacks added here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from finfed.errors import ConfigError

AUTO = "auto"
#: architectures peft's table lacks: their attention query and value (or fused qkv) projections
EXTRA_LORA_TARGETS = {"distilbert": ["q_lin", "v_lin"], "modernbert": ["Wqkv"], "mpnet": ["q", "v"]}


def backbone_type(model: nn.Module) -> str:
    """The backbone's ``model_type`` (``bert``, ``llama``, ...), under finfed's classifier or peft's wrapper."""
    config = getattr(model, "config", None)
    encoder_config = getattr(config, "encoder_config", None)
    if isinstance(encoder_config, dict) and encoder_config.get("model_type"):
        return str(encoder_config["model_type"])
    return str(getattr(config, "model_type", ""))


def is_decoder_only(model_type: str) -> bool:
    """Decoder-only (causal) language models: no masked-LM head in transformers, a causal one."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def resolve_pooling(setting: str, model_type: str) -> str:
    """``model.pooling`` for this backbone: ``auto`` = the last real token for decoders, the mean for encoders."""
    if setting != AUTO:
        return setting
    return "last" if is_decoder_only(model_type) else "mean"


def default_lora_targets(model_type: str) -> list[str] | None:
    """peft's attention targets for ``model_type`` (e.g. bert: query, value), or None if it knows none."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    targets = PEFT_TARGETS.get(model_type) or EXTRA_LORA_TARGETS.get(model_type)
    return list(targets) if targets else None


def lora_targets(setting: tuple[str, ...] | list[str], model: nn.Module) -> list[str]:
    """``lora.target_modules`` for ``model``: as configured, or (``auto``) the architecture's default."""
    names = list(setting)
    if AUTO not in names:
        return names
    if names != [AUTO]:
        raise ConfigError(f"`lora.target_modules` is either `auto` alone or a list of module names, got {names}")
    model_type = backbone_type(model)
    targets = default_lora_targets(model_type)
    if targets is None:
        raise ConfigError(f"`lora.target_modules` is `auto`, but peft knows no default targets for backbone "
                          f"type {model_type!r}; name them, e.g. from its linear layers: "
                          f"{', '.join(linear_layer_names(model)[:12])}")
    return targets


def linear_layer_names(model: nn.Module) -> list[str]:
    """The distinct last names of ``model``'s linear layers: the usual LoRA targets."""
    names: dict[str, None] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            names.setdefault(name.rsplit(".", 1)[-1], None)
    return list(names)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer that can pad: decoders (GPT-2, Llama) often ship without a pad token; the end-of-text
    token stands in (padding is masked out, and ``last`` pooling finds the last real token on either side)."""
    if getattr(tokenizer, "pad_token", None) is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ConfigError("the backbone's tokenizer has no pad, end-of-text or unknown token to pad with")
        tokenizer.pad_token = fallback
    return tokenizer


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute the backbone's layer activations in the backward pass (``train.gradient_checkpointing``).

    Non-reentrant checkpointing: it needs no gradient on the (frozen) embeddings' output.
    """
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return
    raise ConfigError(f"`train.gradient_checkpointing` is on, but backbone type {backbone_type(model)!r} "
                      "does not support gradient checkpointing in transformers; set it to false")
