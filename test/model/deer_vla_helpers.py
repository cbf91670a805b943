"""Small DeeR-VLA models, a local GPT-NeoX-style tokenizer and open-flamingo's reference modules for the tests."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from deer_ros.model.configuration_deer_vla import (
    ClipVisionConfig,
    DeerVLAConfig,
    LstmHeadConfig,
    MptDecoderConfig,
    PerceiverConfig,
)
from deer_ros.model.modeling_deer_vla import DeerVLAFlamingo

INSTRUCTIONS = ('push the red block to the left', 'open the drawer', 'turn on the light bulb',
                'lift the blue block from the table')
EOS = '<|endoftext|>'


def write_tokenizer(directory: Path) -> int:
    """A byte-level BPE tokenizer laid out like MPT's (eos = bos = unk = ``<|endoftext|>``, id 0); returns its size."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(INSTRUCTIONS) * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    fast.save_pretrained(directory)
    return len(fast)


def tiny_config(tokenizer_dir: Path | None = None, base_vocab: int = 317, *, qk_layernorm: bool = True,
                block_layout: str = 'mosaic_gpt', cross_attn_every_n_layers: int = 1, history: str = 'carry',
                history_window: int = 12, exit_pooling: str = 'all_tokens', num_exits: int = 3) -> DeerVLAConfig:
    """deer-vla-3b's structure at a width the CPU runs in milliseconds: of 8 decoder layers, exits after 2, 4, 6."""
    return DeerVLAConfig(
        name='tiny-vla',
        vision=ClipVisionConfig(image_size=28, patch_size=14, hidden_size=32, num_layers=2, num_attention_heads=2,
                                intermediate_size=64),
        perceiver=PerceiverConfig(depth=2, num_latents=4, heads=2, dim_head=8, ff_mult=2),
        decoder=MptDecoderConfig(d_model=48, n_heads=4, num_layers=8, vocab_size=base_vocab + 3,
                                 qk_layernorm=qk_layernorm, block_layout=block_layout,
                                 cross_attn_every_n_layers=cross_attn_every_n_layers, cross_attn_heads=2,
                                 cross_attn_dim_head=8, cross_attn_ff_mult=2, media_token_id=base_vocab + 1,
                                 tokenizer_path=None if tokenizer_dir is None else str(tokenizer_dir)),
        head=LstmHeadConfig(hidden_size=16, lstm_num_layers=2, history=history, history_window=history_window),
        exit_interval=2, num_exits=num_exits, exit_pooling=exit_pooling)


def randomise(model: DeerVLAFlamingo, seed: int = 0) -> DeerVLAFlamingo:
    """Random values everywhere, gates open and LayerNorm scales near 1, so every tensor matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(1.0)
    return model.eval()


def tiny_model(config: DeerVLAConfig, seed: int = 0) -> DeerVLAFlamingo:
    torch.manual_seed(seed)
    return randomise(DeerVLAFlamingo(config), seed)


def with_config(model: DeerVLAFlamingo, **changes) -> DeerVLAFlamingo:
    """The same weights under a config with some top-level or head fields changed."""
    head = {key: changes.pop(key) for key in ('history', 'history_window') if key in changes}
    config = dataclasses.replace(model.config, head=dataclasses.replace(model.config.head, **head), **changes)
    copy = DeerVLAFlamingo(config)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def open_flamingo_module(name: str) -> ModuleType:
    """``open_flamingo.src.<name>`` from the installed files, skipping the package ``__init__`` (imports open_clip)."""
    spec = importlib.util.find_spec('open_flamingo')
    if spec is None or not spec.submodule_search_locations:
        pytest.skip('open-flamingo is not installed (requirements/no-deps.txt); ./setup.sh installs it')
    source = Path(spec.submodule_search_locations[0]) / 'src'
    package = 'open_flamingo_reference'
    if package not in sys.modules:
        package_spec = importlib.util.spec_from_file_location(package, source / '__init__.py',
                                                              submodule_search_locations=[str(source)])
        module = importlib.util.module_from_spec(package_spec)
        sys.modules[package] = module
        package_spec.loader.exec_module(module)
    return importlib.import_module(f'{package}.{name}')
