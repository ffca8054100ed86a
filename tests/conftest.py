"""Shared fixtures: a tiny random BERT built from a config, so unit tests stay fast."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from finfed.config import load_config
from finfed.data.synthetic_news import generate_news


@pytest.fixture(autouse=True)
def _finfed_logging_restored():
    """The ServerApp configures the `finfed` logger for its process (finfed/runtime/app_log.py); a test that
    runs it in-process must not hand that configuration to the next test (caplog would see no record)."""
    logger = logging.getLogger("finfed")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers, logger.propagate = handlers, propagate
    logger.setLevel(level)


def _write_tiny_bert(folder: Path) -> Path:
    words = set()
    for text in generate_news(600, 4, seed=1)["text"]:
        words.update(re.findall(r"[a-z]+|\d|[^\sa-z\d]", text.lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    return str(_write_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


def _tiny_overrides(backbone: str, run_dir: Path) -> list[str]:
    return [f"model.backbone={backbone}", f"run_dir={run_dir}", "data.synthetic_size=400",
            "federation.num_sites=2", "federation.rounds=2", "train.batch_size=16", "lora.r=4",
            "train.learning_rate=0.01"]


@pytest.fixture
def tiny_config(tiny_backbone, tmp_path):
    """A fast experiment: tiny BERT, small synthetic data, 2 sites, 2 rounds."""
    def make(*overrides: str):
        return load_config(None, [*_tiny_overrides(tiny_backbone, tmp_path / "run"), *overrides])
    return make


@pytest.fixture
def tiny_simulate(tiny_backbone, tmp_path):
    """Run `finfed simulate` on the tiny federation (run dir: tmp_path/run); returns the exit code."""
    from finfed.cli.main import main

    def run(*overrides: str) -> int:
        settings = [*_tiny_overrides(tiny_backbone, tmp_path / "run"), *overrides]
        return main(["simulate", *[arg for item in settings for arg in ("--set", item)]])
    return run
