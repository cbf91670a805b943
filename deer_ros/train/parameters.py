"""Named parameter groups of :class:`DeerVLA`: what each stage trains, freezes and decays.

Freezing is by group so a run can say ``--freeze vision decoder`` without
knowing attribute names, and a test can check every parameter is in exactly
one group (a new sub-module cannot silently escape the freezing rules).
"""
from __future__ import annotations

from typing import Iterable, Iterator

from torch import nn

from deer_ros.model.configuration_deer import DeerConfig
from deer_ros.model.modeling_deer import DeerVLA

# group -> top-level attributes of DeerVLA
GROUPS: dict[str, tuple[str, ...]] = {
    'vision': ('vision_encoders',),
    'resampler': ('resamplers', 'proprio_proj', 'proprio_to_exit'),
    'cross_attention': ('cross_attention',),
    'embeddings': ('embed_tokens', 'text_proj'),
    'decoder': ('layers',),
    'head': ('action_head',),
}
BACKBONE_GROUPS = tuple(group for group in GROUPS if group != 'head')
# weight matrices that get weight decay; norms, biases, gates, latents, positions and embeddings do not
_DECAYED = {nn.Linear: ('weight',), nn.Conv2d: ('weight',), nn.LSTMCell: ('weight_ih', 'weight_hh')}


def check_groups(names: Iterable[str]) -> tuple[str, ...]:
    """Validate group names given by a user; raise ``ValueError`` naming the bad one."""
    names = tuple(names)
    unknown = [name for name in names if name not in GROUPS]
    if unknown:
        raise ValueError(f'unknown parameter groups {unknown}; choose from {sorted(GROUPS)}')
    return names


def default_frozen(config: DeerConfig) -> tuple[str, ...]:
    """Joint-stage default: a pretrained decoder (and its embeddings) stays frozen when the config says so."""
    if config.decoder.source != 'random' and config.decoder.freeze_pretrained:
        return ('embeddings', 'decoder')
    return ()


def group_modules(model: DeerVLA, groups: Iterable[str]) -> Iterator[nn.Module]:
    for group in groups:
        for attribute in GROUPS[group]:
            module = getattr(model, attribute)
            if module is not None:
                yield module


def set_trainable(model: DeerVLA, groups: Iterable[str]) -> None:
    """``requires_grad`` on exactly the parameters of ``groups``; everything else in the model is frozen."""
    model.requires_grad_(False)
    for module in group_modules(model, groups):
        module.requires_grad_(True)


def decay_split(modules: Iterable[nn.Module]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters of ``modules`` split into (decayed weight matrices, the rest)."""
    decayed: dict[int, nn.Parameter] = {}
    everything: dict[int, nn.Parameter] = {}
    for root in modules:
        for module in root.modules():
            for kind, names in _DECAYED.items():
                if isinstance(module, kind):
                    decayed.update({id(getattr(module, n)): getattr(module, n) for n in names})
        everything.update({id(p): p for p in root.parameters()})
    trainable = {key: p for key, p in everything.items() if p.requires_grad}
    return ([p for key, p in trainable.items() if key in decayed],
            [p for key, p in trainable.items() if key not in decayed])
