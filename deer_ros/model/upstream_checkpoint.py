"""Import a published DeeR-VLA checkpoint into a deer_ros checkpoint directory (``deer-ros import-upstream``).

Upstream's ``.pth`` (``robot_flamingo/train/train_utils.py: save_ckpt``)
holds the training settings at the top level (``early_exit_layer``,
``exit_interval``, the head's dropout/LayerNorm/depth switches, ``pooling``,
``precision``, ...), the optimizer state, optionally the cached consistency
``values`` (``eval_calvin.py`` re-saves the file with them) and
``model_state_dict``: the parameters that required gradients, saved from the
DDP wrapper (every key starts with ``module.``). Its saver deletes a frozen
parameter only under its first name, so the frozen MPT blocks are still in
the file under their alias ``lang_encoder.old_decoder_blocks.N``, and every
cross-attention block appears twice (see
:mod:`~deer_ros.model.conversion_deer_vla`). The CLIP tower, and the MPT
blocks of a file saved otherwise, are not in it: they come from the local
MPT directory and open_clip file, as upstream's evaluation loads them.

The sources fill the model in upstream's loading order, later ones
winning: the DeeR checkpoint, then OpenFlamingo's ``checkpoint.pt``, then
MPT's directory and the CLIP file (:class:`Assembly`). The load is strict:
every tensor of the model must be filled with the right shape, and every
tensor of the inputs must be used or known to be unused (training-only
heads, CLIP's text tower, MPT's final norm, layers past the cut); anything
else stops the import with a report. Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .configuration_deer import ConfigError
from .configuration_deer_vla import DeerVLAConfig, load_deer_vla_config
from .conversion_deer_vla import canonical_upstream_name, from_upstream_name, split_fused_qkv
from .modeling_deer_vla import DeerVLAFlamingo
from .tokenization_deer_vla import FlamingoPromptEncoder
from .upstream_files import (
    CLIP_HINT,
    MptDirectory,
    UpstreamImportError,
    read_clip_file,
    read_state_file,
    read_torch_file,
    tensor_mapping,
)

# Top-level entries of upstream's checkpoint that shape the model (``eval_calvin.py: readout_args``).
HYPERPARAMETERS = ('epoch', 'head_type', 'early_exit_layer', 'multi_exit', 'share_exit', 'exit_interval',
                   'exit_dropout', 'lstm_dropout', 'dropout_mode', 'mlp_layernorm', 'lstm_layernorm',
                   'mlp_num_hidden_layers', 'lstm_num_layers', 'pooling', 'precision', 'layernorm')
PUBLISHED = {2048: 'deer-vla-3b', 4096: 'deer-vla-9b'}  # LLM width -> config
TRAINED_ON = {'deer-vla-3b': 'mpt-1b-redpajama-200b-dolly', 'deer-vla-9b': 'mpt-7b'}
TOKENIZER_DIR = 'tokenizer'
CHECKPOINT_HINT = ('a DeeR-VLA checkpoint .pth from the Hugging Face repository Yang130/DeeR-VLA '
                   '(DeeR_task_{D_D,ABC_D,ABCD_D}-exit-strategy, DeeR_9B_task_D_D-exit-strategy)')
OPENFLAMINGO_HINT = ("OpenFlamingo's checkpoint.pt of the same model (openflamingo/OpenFlamingo-3B-vitl-mpt1b-"
                     'langinstruct for 3B, OpenFlamingo-9B-vitl-mpt7b for 9B)')
# Upstream tensors deer_ros does not hold, by canonical name, and why.
UNUSED = (
    (re.compile(r'^(lm_head|lm_exit_modules)\.'), "DeeR's training-only heads (only extra_exit acts at inference)"),
    (re.compile(r'^lang_encoder\.lm_head\.'), "the LLM's output layer (the action head replaces it)"),
    (re.compile(r'^lang_encoder\.transformer\.(ln_f|norm_f)\.'), "MPT's final norm (exits read raw block outputs)"),
    (re.compile(r'^vision_encoder\.(?!visual\.)'), "CLIP's text tower"),
    (re.compile(r'^vision_encoder\.visual\.proj$'), "CLIP's image projection (the patch tokens are used)"),
)
PAST_THE_CUT = 'decoder layers past the last exit (never run)'
HINTS = {'--checkpoint': CHECKPOINT_HINT, '--openflamingo': OPENFLAMINGO_HINT, '--mpt': MptDirectory.HINT,
         '--clip': CLIP_HINT}
MPT_EMBEDDINGS = "MPT's own token embeddings (OpenFlamingo's resized ones come from the checkpoint)"
_BLOCK = re.compile(r'^(?:model\.)?transformer\.blocks\.(\d+)\.(.+)$')


@dataclass
class UpstreamCheckpoint:
    """A DeeR checkpoint file: tensors under canonical upstream names, settings, cached consistency values."""

    path: Path
    tensors: dict[str, torch.Tensor]
    hyperparameters: dict[str, Any]
    values: torch.Tensor | None
    aliases: int


def canonical_tensors(state: dict[str, torch.Tensor], what: str, path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """``state`` under canonical upstream names (``module.`` dropped, aliases folded) and the number of aliases
    folded; two copies of a tensor that differ are an error."""
    canonical: dict[str, torch.Tensor] = {}
    aliases = 0
    for key, tensor in state.items():
        name = canonical_upstream_name(key)
        if name in canonical:
            aliases += 1
            if canonical[name].shape != tensor.shape or not torch.equal(canonical[name], tensor):
                raise UpstreamImportError(f'{what} {path}: {key} is a second copy of {name} with other values, '
                                          f'so upstream did not save this file: pass {HINTS[what]}')
            continue
        canonical[name] = tensor
    return canonical, aliases


def read_upstream_checkpoint(path: Path) -> UpstreamCheckpoint:
    """The DeeR checkpoint at ``path`` (a bare state dict is accepted too, as upstream's evaluation does)."""
    content = read_torch_file(path, '--checkpoint', CHECKPOINT_HINT)
    hyperparameters: dict[str, Any] = {}
    values = None
    if isinstance(content, dict) and 'model_state_dict' in content:
        hyperparameters = {key: content[key] for key in HYPERPARAMETERS if key in content}
        values = content.get('values')
        content = content['model_state_dict']
    state = tensor_mapping(content, '--checkpoint', path, CHECKPOINT_HINT)
    tensors, aliases = canonical_tensors(state, '--checkpoint', path)
    if not any(name.startswith('extra_exit.') for name in tensors):
        looks_like = ('it looks like an OpenFlamingo checkpoint: pass that as --openflamingo, and as --checkpoint '
                      if any(name.startswith('perceiver.') for name in tensors) else 'pass ')
        raise UpstreamImportError(f'--checkpoint {path} holds no DeeR exit head (extra_exit.*): {looks_like}'
                                  f'{CHECKPOINT_HINT}')
    if values is not None and not isinstance(values, torch.Tensor):
        raise UpstreamImportError(f'--checkpoint {path}: its cached "values" are a {type(values).__name__}, '
                                  'not a tensor; pass the checkpoint as upstream saved it')
    return UpstreamCheckpoint(path, tensors, hyperparameters, values, aliases)


def llm_width(checkpoint: UpstreamCheckpoint) -> int:
    """The LLM's width, read from the token embeddings or the exit head's input."""
    for name in ('lang_encoder.transformer.wte.weight', 'extra_exit.rnn.layers.0.weight_ih_l0',
                 'extra_exit.rnn.weight_ih_l0'):
        if name in checkpoint.tensors:
            return int(checkpoint.tensors[name].shape[1])
    raise UpstreamImportError(f'--checkpoint {checkpoint.path}: neither token embeddings nor an LSTM exit head: '
                              f'pass {CHECKPOINT_HINT}')


def published_config_for(checkpoint: UpstreamCheckpoint) -> DeerVLAConfig:
    """``deer-vla-3b`` or ``deer-vla-9b``, whichever the checkpoint's LLM width says."""
    width = llm_width(checkpoint)
    if width not in PUBLISHED:
        raise UpstreamImportError(f'--checkpoint {checkpoint.path}: an LLM of width {width} is neither DeeR-VLA 3B '
                                  '(2048) nor 9B (4096); pass --config with a DeeR-VLA config file describing it')
    return load_deer_vla_config(PUBLISHED[width])


def derive_config(hyperparameters: dict[str, Any], base: DeerVLAConfig) -> DeerVLAConfig:
    """``base`` with the exits and head the checkpoint's settings describe (upstream's defaults where absent)."""
    def get(key: str, default: Any) -> Any:
        return hyperparameters.get(key, default)

    for key, expected in (('head_type', 'deterministic'), ('pooling', 'max')):
        if get(key, expected) != expected:
            raise UpstreamImportError(f'the checkpoint has {key} {get(key, expected)!r}; deer_ros runs DeeR-VLA '
                                      f'with {key} {expected!r} only: pass {CHECKPOINT_HINT}')
    kept = int(get('early_exit_layer', -1))
    kept = (kept if kept >= 0 else kept + base.decoder.num_layers) + 1
    interval = int(get('exit_interval', 1))
    if interval < 1 or kept % interval:
        raise UpstreamImportError(f'the checkpoint keeps {kept} decoder layers with an exit every {interval}: '
                                  'deer_ros needs evenly spaced exits (early_exit_layer + 1 a multiple of '
                                  f'exit_interval): pass {CHECKPOINT_HINT}')
    head = dataclasses.replace(
        base.head, lstm_dropout=float(get('lstm_dropout', 0.0)), dropout=float(get('exit_dropout', 0.0)),
        dropout_mode=str(get('dropout_mode', 'wo_last')),
        mlp_layernorm=bool(get('layernorm', get('mlp_layernorm', False))),  # legacy key, as upstream reads it
        lstm_layernorm=bool(get('lstm_layernorm', False)), mlp_num_hidden_layers=int(get('mlp_num_hidden_layers', 3)),
        lstm_num_layers=int(get('lstm_num_layers', 4)), history='carry')
    try:
        return dataclasses.replace(base, exit_interval=interval, num_exits=kept // interval, head=head,
                                   exit_pooling='all_tokens', first_exit_reference=interval >= 2)
    except ConfigError as error:
        raise UpstreamImportError(f'the checkpoint\'s settings do not describe a model deer_ros can build ({error}): '
                                  f'pass {CHECKPOINT_HINT}') from error


def check_mpt(mpt: MptDirectory, config: DeerVLAConfig) -> None:
    """The MPT directory holds the LLM ``config`` was trained on (width, heads, depth, layout)."""
    decoder = config.decoder
    ours = (decoder.d_model, decoder.n_heads, decoder.num_layers, decoder.expansion_ratio, decoder.qk_layernorm,
            decoder.block_layout)
    theirs = (mpt.d_model, mpt.n_heads, mpt.n_layers, mpt.expansion_ratio, mpt.qk_layernorm, mpt.layout)
    if ours != theirs:
        wanted = TRAINED_ON.get(config.name, 'the MPT model the checkpoint was trained on')
        raise UpstreamImportError(
            f'the checkpoint is {config.name} (MPT d_model {decoder.d_model}, {decoder.n_heads} heads, '
            f'{decoder.num_layers} layers, {decoder.block_layout} layout) but --mpt {mpt.path} holds '
            f'{mpt.describe()}: pass the directory of {wanted}')


def unused_reason(name: str, config: DeerVLAConfig) -> str | None:
    """Why an upstream tensor (canonical name) has no place in deer_ros's model; ``None``: it should have one."""
    for pattern, reason in UNUSED:
        if pattern.match(name):
            return reason
    layer = re.match(r'^lang_encoder\.transformer\.blocks\.(\d+)\.', name)
    if layer and int(layer.group(1)) >= config.kept_layers:
        return PAST_THE_CUT
    return None


@dataclass
class ImportReport:
    """What each input gave, what was left out and why, and what went wrong (``problems``: fatal)."""

    used: dict[str, int] = field(default_factory=dict)
    aliases: int = 0
    unused: Counter = field(default_factory=Counter)
    superseded: int = 0
    differing: list[str] = field(default_factory=list)
    converted: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f'  {source}: {count} tensors used' for source, count in self.used.items()]
        if self.aliases:
            lines.append(f'  {self.aliases} alias copies in the checkpoint folded (module. prefix, '
                         'old_decoder_blocks, gated_cross_attn_layers)')
        if self.superseded:
            lines.append(f'  {self.superseded} tensors given again by a later input: the earlier one kept '
                         '(upstream\'s loading order)')
        lines += [f'  not used: {count} tensors, {reason}' for reason, count in sorted(self.unused.items())]
        lines += [f'  converted to float32: {count} {dtype} tensors' for dtype, count in sorted(self.converted.items())]
        if self.differing:
            lines.append(f'  warning: {len(self.differing)} tensors differ between the checkpoint and a later input '
                         f'(the checkpoint\'s are used), e.g. {self.differing[0]}: was --mpt the model it was '
                         'trained on?')
        lines += [f'  ERROR {problem}' for problem in self.problems]
        return lines


class Assembly:
    """Fills a DeeR-VLA model's tensors from upstream sources, first source first, strictly."""

    def __init__(self, config: DeerVLAConfig) -> None:
        self.config = config
        with torch.device('meta'):
            self.model = DeerVLAFlamingo(config)
        self.expected = {name: tuple(tensor.shape) for name, tensor in self.model.state_dict().items()}
        self.filled: dict[str, torch.Tensor] = {}
        self.report = ImportReport()

    def add(self, source: str, tensors: dict[str, torch.Tensor], unused: dict[str, str] | None = None) -> None:
        """Fill from ``tensors`` (canonical upstream names); ``unused``: names of the source left out, with why."""
        for reason in (unused or {}).values():
            self.report.unused[reason] += 1
        used = 0
        for name, tensor in tensors.items():
            targets = from_upstream_name(name, self.config)
            if not targets:
                reason = unused_reason(name, self.config)
                if reason is None:
                    self._unexpected(source, name)
                else:
                    self.report.unused[reason] += 1
                continue
            for target, part in zip(targets, split_fused_qkv(tensor) if len(targets) == 3 else (tensor,)):
                used += self._fill(source, name, target, part)
        self.report.used[source] = used

    def _fill(self, source: str, name: str, target: str, tensor: torch.Tensor) -> int:
        if target not in self.expected:
            if self.model._is_dropped_layer(target):
                self.report.unused[PAST_THE_CUT] += 1
            else:
                self._unexpected(source, name)
            return 0
        if target in self.filled:
            self.report.superseded += 1
            kept = self.filled[target]
            if kept.shape == tensor.shape and not torch.equal(kept, tensor.to(kept.dtype)):
                self.report.differing.append(name)
            return 0
        if tuple(tensor.shape) != self.expected[target]:
            self.report.problems.append(f'{name} in {source} has shape {tuple(tensor.shape)}, the model needs '
                                        f'{self.expected[target]}: pass {HINTS[source]}')
            return 0
        if tensor.dtype != torch.float32:
            self.report.converted[str(tensor.dtype).removeprefix('torch.')] += 1
        self.filled[target] = tensor.to(torch.float32)
        return 1

    def _unexpected(self, source: str, name: str) -> None:
        self.report.problems.append(f'unexpected tensor {name} in {source}, a part of no model deer_ros builds: '
                                    f'pass {HINTS[source]}')

    def finish(self) -> DeerVLAFlamingo:
        """The model with every tensor filled; raises :class:`UpstreamImportError` with the report otherwise."""
        for name in sorted(set(self.expected) - set(self.filled)):
            self.report.problems.append(f'missing tensor {name}: {self._provider(name)}')
        if self.report.problems:
            shown = self.report.lines()
            raise UpstreamImportError('the inputs do not make up the model (nothing written):\n' + '\n'.join(
                shown[:40] + ([f'  ... {len(shown) - 40} more'] if len(shown) > 40 else [])))
        self.model.load_state_dict({name: tensor.contiguous() for name, tensor in self.filled.items()},
                                   strict=True, assign=True)
        return self.model

    @staticmethod
    def _provider(name: str) -> str:
        """Which input should have given tensor ``name``."""
        if name.startswith('vision_encoder.'):
            return 'pass --clip with the ViT-L-14 weights'
        if name.startswith('lang_encoder.blocks.'):
            return 'pass --mpt with the MPT directory the checkpoint was trained on'
        if name.startswith('action_head.'):
            return f'the exit head (extra_exit.*) comes from --checkpoint: pass {CHECKPOINT_HINT}'
        return f'comes from --checkpoint or --openflamingo: pass {OPENFLAMINGO_HINT}'


def _mpt_canonical(key: str) -> str:
    """An MPT weight name as the block inside upstream's model holds it."""
    block = _BLOCK.match(key)
    if block:
        return f'lang_encoder.transformer.blocks.{block.group(1)}.decoder_layer.{block.group(2)}'
    return 'lang_encoder.' + key.removeprefix('model.')


def mpt_tensors(mpt: MptDirectory, config: DeerVLAConfig) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """MPT's tensors of the kept blocks (canonical names) and the other names with why they are left out."""
    def kept(key: str) -> bool:
        block = _BLOCK.match(key)
        return block is not None and int(block.group(1)) < config.kept_layers

    tensors, names = mpt.read(kept)
    unused: dict[str, str] = {}
    for key in names:
        if kept(key):
            continue
        canonical = _mpt_canonical(key)
        reason = MPT_EMBEDDINGS if canonical == 'lang_encoder.transformer.wte.weight' else \
            unused_reason(canonical, config)
        if reason is None:
            raise UpstreamImportError(f'--mpt {mpt.path}: unexpected tensor {key}; pass {MptDirectory.HINT}')
        unused[canonical] = reason
    return {_mpt_canonical(key): tensor for key, tensor in tensors.items()}, unused


@dataclass
class ImportResult:
    """A written checkpoint directory and what the import found on the way."""

    output: Path
    config: DeerVLAConfig
    report: ImportReport
    hyperparameters: dict[str, Any]
    values: torch.Tensor | None
    checkpoint_name: str


def _check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UpstreamImportError(f'--output {output} exists and is not an empty directory: pass a new directory')


def _copy_tokenizer(mpt: MptDirectory, directory: Path, config: DeerVLAConfig) -> DeerVLAConfig:
    """MPT's tokenizer files copied to ``directory/tokenizer``; ``config`` pointing there (relative), checked."""
    target = directory / TOKENIZER_DIR
    target.mkdir()
    for file in mpt.tokenizer_files():
        shutil.copy2(file, target / file.name)
    try:
        FlamingoPromptEncoder(dataclasses.replace(config.decoder, tokenizer_path=str(target)))
    except (ConfigError, OSError, ValueError) as error:
        raise UpstreamImportError(f'the tokenizer in --mpt {mpt.path} does not fit the checkpoint ({error}); '
                                  f'pass {MptDirectory.HINT}') from error
    return dataclasses.replace(config, decoder=dataclasses.replace(config.decoder, tokenizer_path=TOKENIZER_DIR))


def import_upstream(checkpoint: Path, mpt: Path, clip: Path, output: Path, *, openflamingo: Path | None = None,
                    config: DeerVLAConfig | None = None) -> ImportResult:
    """Assemble the DeeR-VLA model from upstream files and write ``output`` (``config.json``,
    ``model.safetensors``, ``tokenizer/``).

    ``config``: the DeeR-VLA config the checkpoint's settings are applied to
    (default: ``deer-vla-3b`` or ``deer-vla-9b`` by the checkpoint's width).
    Written to a temporary sibling first and renamed, so a failed import
    leaves nothing behind. Raises :class:`UpstreamImportError` saying what to
    pass instead.
    """
    output = Path(output)
    _check_output(output)
    upstream = read_upstream_checkpoint(Path(checkpoint))
    config = derive_config(upstream.hyperparameters, config or published_config_for(upstream))
    directory = MptDirectory.open(Path(mpt))
    check_mpt(directory, config)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f'.{output.name}.importing-{os.getpid()}')
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        config = _copy_tokenizer(directory, staging, config)
        model, report = _assemble(upstream, config, directory, Path(clip), openflamingo)
        model.save_pretrained(staging)
        if output.exists():
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ImportResult(output, config, report, upstream.hyperparameters, upstream.values, Path(checkpoint).name)


def _assemble(upstream: UpstreamCheckpoint, config: DeerVLAConfig, mpt: MptDirectory, clip: Path,
              openflamingo: Path | None) -> tuple[DeerVLAFlamingo, ImportReport]:
    """The model filled from every input in upstream's loading order (later inputs fill only what is left)."""
    clip_state = read_clip_file(clip)
    assembly = Assembly(config)
    assembly.report.aliases = upstream.aliases
    assembly.add('--checkpoint', upstream.tensors)
    if openflamingo is not None:
        state = read_state_file(Path(openflamingo), '--openflamingo', OPENFLAMINGO_HINT)
        assembly.add('--openflamingo', canonical_tensors(state, '--openflamingo', Path(openflamingo))[0])
    assembly.add('--mpt', *mpt_tensors(mpt, config))
    assembly.add('--clip', {f'vision_encoder.{key}': value for key, value in clip_state.items()})
    return assembly.finish(), assembly.report
