"""Builders for student tests: a tiny T5 with a word-level tokenizer made here, and small export folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from curation.export import card_metadata, render_card, write_dataset

SPECIALS = ["<pad>", "</s>", "<unk>"]


def _sid(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_export(folder: Path, rows: list[tuple[str, str]], splits: dict[str, list[int]]) -> Path:
    """An export-shaped dataset folder: `splits` maps a split to the indices of `rows` (source, paraphrase)."""
    frames = {}
    for split, idx in splits.items():
        frames[split] = pl.DataFrame(
            {"pair_id": [f"p{i}" for i in idx], "source_id": [_sid(rows[i][0]) for i in idx],
             "source": [rows[i][0] for i in idx], "paraphrase": [rows[i][1] for i in idx]})
    write_dataset(folder, frames, render_card(card_metadata("tiny", frames, "cc-by-4.0", []), "# tiny\n"))
    return folder


def build_tiny_t5(folder: Path, texts: list[str]) -> Path:
    """A 2-layer T5 (random weights) and a word-level fast tokenizer over `texts`, saved to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    words = {w for t in texts for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(t)}
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(words | {"paraphrase", ":"}))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    import torch

    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _word_tokenizer(texts: list[str], extra: set[str], single: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = {w for t in texts for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(t)}
    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(words | extra))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny_llama(folder: Path, texts: list[str], seed: int = 0, layers: int = 4) -> Path:
    """A tiny Llama-style causal LM (random weights, `seed`) and a word-level tokenizer over `texts`, saved to
    `folder`: two built over the same texts share one tokenizer (word-level KD needs that)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _word_tokenizer(texts, {"Paraphrase", ":", "Rewrite", "this", "sentence"}, "$A")
    config = LlamaConfig(vocab_size=len(tok) + 3, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                         eos_token_id=1, bos_token_id=1, tie_word_embeddings=False)  # 3 unused embedding rows
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
