"""Reading the files an upstream DeeR-VLA model is assembled from, safely and with errors that say what to pass.

Upstream ``.pth`` / ``.pt`` / ``.bin`` files are Python pickles, and
unpickling can run arbitrary code. Every one is read with
``torch.load(weights_only=True)``: only tensors and plain containers and
scalars (dict, list, tuple, str, int, float, bool, None) are accepted, so a
crafted file is refused instead of executed. Zip-format files are
memory-mapped, so the optimizer state a training checkpoint carries is never
read into memory. ``.safetensors`` files are read tensor by tensor.

Three kinds of input (nothing is downloaded):

* a PyTorch state file: a DeeR checkpoint, an OpenFlamingo ``checkpoint.pt``
  or open_clip's ViT-L-14 state dict (:func:`read_torch_file`);
* MPT's Hugging Face directory (``config.json``, ``pytorch_model*.bin`` or
  ``model*.safetensors``, tokenizer files) (:class:`MptDirectory`);
* open_clip's ViT-L-14 weights as a state dict (:func:`read_clip_file`).
"""
from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open

TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.json',
                   'merges.txt', 'added_tokens.json')
CLIP_HINT = ('open_clip ViT-L-14 "openai" weights as a state dict: open_clip_pytorch_model.bin or '
             'open_clip_model.safetensors of the Hugging Face repository timm/vit_large_patch14_clip_224.openai')


class UpstreamImportError(ValueError):
    """An input of ``deer-ros import-upstream`` is missing, unreadable or the wrong one; the message says what to
    pass instead."""


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte header length and a JSON header."""
    with open(path, 'rb') as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b'{'


def _refused_global(error: Exception) -> str | None:
    """The Python object a ``weights_only`` load refused, if that is why it failed."""
    match = re.search(r'(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)', str(error))
    return match.group(1) if match else None


def read_torch_file(path: Path, what: str, hint: str) -> Any:
    """The content of a ``torch.save`` file, read with ``weights_only=True``.

    ``what`` names the input (``--checkpoint``), ``hint`` says what to pass.
    Raises :class:`UpstreamImportError` for a missing, empty, truncated,
    foreign-format or unsafe file.
    """
    if not path.is_file():
        raise UpstreamImportError(f'{what} {path}: no such file; pass {hint}')
    if path.stat().st_size == 0:
        raise UpstreamImportError(f'{what} {path} is empty: download it again, or pass {hint}')
    if _is_safetensors(path):
        raise UpstreamImportError(f'{what} {path} is a safetensors file, not a PyTorch pickle; pass {hint}')
    zipped = zipfile.is_zipfile(path)
    if zipped:
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith('/constants.pkl') or '/code/' in name for name in archive.namelist()):
                raise UpstreamImportError(f'{what} {path} is a TorchScript archive, which deer_ros does not run; '
                                          f'pass {hint}')
    try:
        return torch.load(path, map_location='cpu', weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as error:
        refused = _refused_global(error)
        if refused is None:
            raise UpstreamImportError(f'cannot read {what} {path}: not a PyTorch checkpoint or damaged '
                                      f'({str(error).splitlines()[0]}); pass {hint}') from error
        raise UpstreamImportError(
            f'{what} {path} holds a Python object of type {refused}, not only tensors and plain values: refusing to '
            'unpickle it, since a crafted file could run code while loading (deer_ros loads with weights_only=True); '
            f'pass {hint}') from error
    except Exception as error:  # zip/pickle internals raise RuntimeError, EOFError, KeyError, IndexError, ...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UpstreamImportError(f'cannot read {what} {path}: the file is truncated or not a PyTorch checkpoint '
                                  f'({reason[:200]}); download it again or pass {hint}') from error


def tensor_mapping(content: Any, what: str, path: Path, hint: str) -> dict[str, torch.Tensor]:
    """``content`` as a flat name -> tensor mapping, or an error saying it is something else."""
    if not isinstance(content, dict) or not content:
        raise UpstreamImportError(f'{what} {path} does not hold a state dict (got {type(content).__name__}); '
                                  f'pass {hint}')
    tensors = {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}
    if len(tensors) != len(content) or not all(isinstance(key, str) for key in content):
        others = sorted(str(key) for key, value in content.items() if not isinstance(value, torch.Tensor))[:5]
        raise UpstreamImportError(f'{what} {path} is not a flat state dict (entries {others} are not tensors); '
                                  f'pass {hint}')
    return tensors


def read_state_file(path: Path, what: str, hint: str) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file (``.safetensors`` or a ``torch.save`` pickle; a ``state_dict`` /
    ``model_state_dict`` entry is unwrapped)."""
    if path.is_file() and _is_safetensors(path):
        with safe_open(str(path), framework='pt', device='cpu') as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}
    content = read_torch_file(path, what, hint)
    if isinstance(content, dict):
        for key in ('model_state_dict', 'state_dict'):
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    return tensor_mapping(content, what, path, hint)


def read_clip_file(path: Path) -> dict[str, torch.Tensor]:
    """open_clip ViT-L-14 weights keyed ``visual.*`` as in upstream's model (the text tower's keys come along)."""
    state = read_state_file(path, '--clip', CLIP_HINT)
    state = {key.removeprefix('module.'): value for key, value in state.items()}
    if any(key.startswith('vision_encoder.visual.') for key in state):
        state = {key.removeprefix('vision_encoder.'): value for key, value in state.items()}
    elif 'conv1.weight' in state:  # the vision tower saved on its own
        state = {f'visual.{key}': value for key, value in state.items()}
    if 'visual.conv1.weight' not in state:
        raise UpstreamImportError(f'--clip {path} holds no CLIP vision tower (no visual.conv1.weight); pass '
                                  f'{CLIP_HINT}')
    return state


@dataclass
class MptDirectory:
    """MPT's Hugging Face directory: its ``config.json``, weight files and tokenizer files.

    ``d_model``, ``n_heads``, ``n_layers``, ``expansion_ratio``, ``qk_layernorm``
    and ``layout`` (``mosaic_gpt`` for MosaicGPT-1B, ``mpt`` for MPT-7B) come
    from ``config.json``, whichever of the two key sets it uses.
    """

    path: Path
    d_model: int
    n_heads: int
    n_layers: int
    expansion_ratio: int
    qk_layernorm: bool
    layout: str
    weight_files: tuple[Path, ...]

    HINT = ('the local Hugging Face directory of the MPT model the checkpoint was trained on '
            '(mpt-1b-redpajama-200b-dolly for DeeR-VLA 3B, mpt-7b for 9B) with config.json, its weight files and '
            'tokenizer files')

    @classmethod
    def open(cls, path: Path) -> 'MptDirectory':
        if not path.is_dir():
            raise UpstreamImportError(f'--mpt {path}: no such directory; pass {cls.HINT}')
        config_path = path / 'config.json'
        if not config_path.is_file():
            raise UpstreamImportError(f'--mpt {path} has no config.json; pass {cls.HINT}')
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as error:
            raise UpstreamImportError(f'--mpt {config_path} is not readable JSON ({error}); pass {cls.HINT}') from error
        if not isinstance(config, dict) or 'd_model' not in config or 'n_layers' not in config:
            raise UpstreamImportError(f'--mpt {path}: config.json does not describe an MPT model '
                                      f'(model_type {config.get("model_type") if isinstance(config, dict) else None!r}'
                                      f'); pass {cls.HINT}')
        attention = config.get('attn_config') or {}
        layout = 'mosaic_gpt' if config.get('model_type') == 'mosaic_gpt' or 'mlp_ratio' in config else 'mpt'
        weights = cls._weight_files(path)
        missing_tokenizer = not (path / 'tokenizer.json').is_file() and not (path / 'vocab.json').is_file()
        if missing_tokenizer:
            raise UpstreamImportError(f'--mpt {path} has no tokenizer files (tokenizer.json): the MPT repositories '
                                      "ship EleutherAI/gpt-neox-20b's tokenizer; put its files into the directory, or "
                                      f'pass {cls.HINT}')
        return cls(path, int(config['d_model']), int(config['n_heads']), int(config['n_layers']),
                   int(config.get('expansion_ratio', config.get('mlp_ratio', 4))),
                   bool(config.get('attn_qk_ln', attention.get('qk_ln', False))), layout, weights)

    @classmethod
    def _weight_files(cls, path: Path) -> tuple[Path, ...]:
        for pattern in ('model.safetensors', 'model-*-of-*.safetensors', 'pytorch_model.bin',
                        'pytorch_model-*-of-*.bin'):
            found = tuple(sorted(path.glob(pattern)))
            if found:
                return found
        raise UpstreamImportError(f'--mpt {path} has no weight files (pytorch_model.bin, pytorch_model-*-of-*.bin, '
                                  f'model.safetensors or model-*-of-*.safetensors); pass {cls.HINT}')

    def describe(self) -> str:
        return f'd_model {self.d_model}, {self.n_heads} heads, {self.n_layers} layers ({self.layout} layout)'

    def read(self, keep: Callable[[str], bool]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """(the tensors whose name ``keep`` accepts, every tensor name); safetensors files read only the kept ones."""
        kept: dict[str, torch.Tensor] = {}
        names: list[str] = []
        for file in self.weight_files:
            if file.suffix == '.safetensors':
                with safe_open(str(file), framework='pt', device='cpu') as handle:
                    names += list(handle.keys())
                    kept.update({name: handle.get_tensor(name) for name in handle.keys() if keep(name)})
            else:
                state = tensor_mapping(read_torch_file(file, '--mpt weight file', self.HINT), '--mpt weight file',
                                       file, self.HINT)
                names += list(state)
                kept.update({name: value for name, value in state.items() if keep(name)})
        return kept, names

    def tokenizer_files(self) -> list[Path]:
        return [self.path / name for name in TOKENIZER_FILES if (self.path / name).is_file()]
