"""Instruction tokens for the DeeR-VLA family: MPT's GPT-NeoX tokenizer from a local directory, OpenFlamingo's way.

OpenFlamingo adds ``<|endofchunk|>`` and ``<image>`` as special tokens and
``<PAD>`` as the pad token (GPT-NeoX has none), then resizes the LLM's
embeddings to the new length; RoboFlamingo wraps each instruction as
``<image>{instruction}<|endofchunk|>{eos}`` and tokenises with right padding,
``max_length`` 32, ``padding='longest'`` (``robot_flamingo/data/data.py``).
The ids therefore depend on the order of those additions, and a checkpoint's
embedding rows only line up with a tokenizer built the same way: the
encoder checks the length and the ``<image>`` id against the config.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .configuration_deer import ConfigError
from .configuration_deer_vla import MptDecoderConfig

MEDIA_TOKEN = '<image>'
END_OF_CHUNK_TOKEN = '<|endofchunk|>'
PAD_TOKEN = '<PAD>'


@functools.lru_cache(maxsize=4)
def load_flamingo_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer in ``path`` with OpenFlamingo's special tokens added (cached per directory)."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f'MPT tokenizer directory not found: {path} (decoder.tokenizer_path: the directory of '
                                'mpt-1b-redpajama-200b(-dolly) or mpt-7b holding tokenizer.json)')
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.add_special_tokens({'additional_special_tokens': [END_OF_CHUNK_TOKEN, MEDIA_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({'pad_token': PAD_TOKEN})
    tokenizer.padding_side = 'right'
    return tokenizer


def flamingo_prompt(instruction: str, eos_token: str) -> str:
    return f'{MEDIA_TOKEN}{instruction.strip()}{END_OF_CHUNK_TOKEN}{eos_token}'


class FlamingoPromptEncoder:
    """Turns instruction strings into token ids (N, L) and a mask of the real tokens, RoboFlamingo's way."""

    def __init__(self, config: MptDecoderConfig) -> None:
        if config.tokenizer_path is None:
            raise ConfigError('decoder.tokenizer_path is required: the local directory of the MPT tokenizer')
        self.tokenizer = load_flamingo_tokenizer(str(config.tokenizer_path))
        self.max_length = config.max_length
        self.padding = config.padding
        if len(self.tokenizer) != config.vocab_size:
            raise ConfigError(f'the tokenizer in {config.tokenizer_path} has {len(self.tokenizer)} tokens with '
                              f'OpenFlamingo\'s additions but decoder.vocab_size is {config.vocab_size}: '
                              'pass the tokenizer of the LLM the checkpoint was trained on')
        media = self.tokenizer.convert_tokens_to_ids(MEDIA_TOKEN)
        if media != config.media_token_id:
            raise ConfigError(f'{MEDIA_TOKEN} is token {media} in {config.tokenizer_path} but decoder.media_token_id '
                              f'is {config.media_token_id}')

    def __call__(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if any(not isinstance(text, str) or not text.strip() for text in instructions):
            raise ValueError('instructions must be non-empty strings')
        encoded = self.tokenizer([flamingo_prompt(text, self.tokenizer.eos_token) for text in instructions],
                                 max_length=self.max_length, padding=self.padding, truncation='only_first',
                                 return_tensors='pt')
        return encoded['input_ids'], encoded['attention_mask']
