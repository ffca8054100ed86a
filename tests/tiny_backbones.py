"""Tiny random backbones of every architecture finfed supports, written as local model folders (no downloads).

Each folder holds a ``config.json`` + weights (``AutoModel`` of the architecture, a few thousand
parameters) and a tokenizer shaped like the family's: encoders get a WordPiece tokenizer (with
token type ids only where the family has them); decoders a word-level one with no pad token,
as GPT-2 and Llama ship, one of them padding on the left.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, BertTokenizerFast, PreTrainedTokenizerFast

from finfed.data.synthetic_filings import generate_filings_qa
from finfed.data.synthetic_news import generate_news

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "max_position_embeddings": 256}
#: model_type -> its tiny config's settings beyond vocab_size
ENCODERS = {
    "bert": SMALL,
    "roberta": {**SMALL, "pad_token_id": 0, "type_vocab_size": 1, "max_position_embeddings": 260},
    "xlm-roberta": {**SMALL, "pad_token_id": 0, "type_vocab_size": 1, "max_position_embeddings": 260},
    "deberta-v2": {**SMALL, "pad_token_id": 0},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 256,
                   "pad_token_id": 0},
    "electra": {**SMALL, "embedding_size": 32},
    "mpnet": {**SMALL, "pad_token_id": 0, "max_position_embeddings": 260},
    "modernbert": {**SMALL, "pad_token_id": 0, "local_attention": 64, "global_attn_every_n_layers": 2,
                   "bos_token_id": 2, "eos_token_id": 3, "cls_token_id": 2, "sep_token_id": 3},
}
DECODERS = {
    "llama": {**SMALL, "num_key_value_heads": 1},
    "qwen2": {**SMALL, "num_key_value_heads": 1},
    "mistral": {**SMALL, "num_key_value_heads": 1, "sliding_window": None},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 256, "bos_token_id": 1, "eos_token_id": 1},
}
#: encoder families whose tokenizer gives token type ids (the others take none, or ignore them)
TOKEN_TYPES = {"bert", "electra", "deberta-v2"}
LEFT_PADDING = {"llama"}


def _words() -> list[str]:
    texts = [*generate_news(400, 4, seed=1)["text"]]
    qa = generate_filings_qa(120, 2, seed=1)
    texts += [*qa["question"], *qa["context"]]
    words: set[str] = set()
    for text in texts:
        words.update(re.findall(r"[a-z]+|\d|[^\sa-z\d]", text.lower()))
    return sorted(words)


def _encoder_tokenizer(folder: Path, model_type: str) -> int:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_words()]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    names = ["input_ids", "token_type_ids", "attention_mask"] if model_type in TOKEN_TYPES \
        else ["input_ids", "attention_mask"]
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_input_names=names).save_pretrained(str(folder))
    return len(vocab)


def _decoder_tokenizer(folder: Path, model_type: str) -> int:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {word: i for i, word in enumerate(["<unk>", "<|endoftext|>", *_words()])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<|endoftext|>",
                                   model_input_names=["input_ids", "attention_mask"],
                                   padding_side="left" if model_type in LEFT_PADDING else "right")
    assert fast.pad_token is None  # as GPT-2 and Llama ship: finfed must supply one
    fast.save_pretrained(str(folder))
    return len(vocab)


def write_tiny_backbone(folder: Path, model_type: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if model_type in DECODERS:
        vocab_size = _decoder_tokenizer(folder, model_type)
        settings = DECODERS[model_type]
    else:
        vocab_size = _encoder_tokenizer(folder, model_type)
        settings = ENCODERS[model_type]
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **settings)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(folder))
    return folder
