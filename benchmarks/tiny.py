"""A tiny random BERT for ``--quick``: the same code paths as the bundled MiniLM, in seconds.

Its vocabulary is the words of finfed's synthetic news and filings, so the quick cases'
synthetic data tokenizes to real ids; the weights are random (quick mode checks that every
case runs to the end, not what it scores).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from finfed.data.synthetic_filings import generate_filings_qa
from finfed.data.synthetic_news import generate_news


def _words() -> set[str]:
    texts = list(generate_news(600, 4, seed=1)["text"])
    filings = generate_filings_qa(200, 3, seed=1)
    for column in ("question", "context"):
        texts += [str(value) for value in filings[column]]
    words: set[str] = set()
    for text in texts:
        words.update(re.findall(r"[a-z]+|\d|[^\sa-z\d]", text.lower()))
    return words


def write_tiny_bert(folder: Path) -> Path:
    """Write the tiny model (tokenizer and weights) to ``folder``; returns it."""
    if (folder / "config.json").exists():
        return folder
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(_words())]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=512)
        BertModel(config).save_pretrained(str(folder))
    return folder
