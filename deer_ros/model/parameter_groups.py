"""Named parameter groups of :class:`DeerVLA`: what each training stage trains and freezes.

Freezing is by group so a run can say ``--freeze vision decoder`` without
knowing attribute names, and a test can check every parameter is in exactly
one group (a new sub-module cannot silently escape the freezing rules).
"""
from __future__ import annotations

from typing import Iterable, Iterator

from torch import nn

from .configuration_deer import DeerConfig
from .modeling_deer import DeerVLA

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

