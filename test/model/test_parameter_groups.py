"""Named parameter groups of DeerVLA: every parameter in exactly one, and what stays frozen by default."""
from __future__ import annotations

import dataclasses

import pytest

from deer_ros.model import DeerVLA, load_config
from deer_ros.model.parameter_groups import GROUPS, check_groups, default_frozen, group_modules


def test_every_parameter_is_in_exactly_one_group():
    config = dataclasses.replace(load_config('tiny'), use_proprio=True)
    model = DeerVLA(config)
    owners = {}
    for group in GROUPS:
        for module in group_modules(model, [group]):
            for parameter in module.parameters():
                assert id(parameter) not in owners, f'{group} and {owners[id(parameter)]} share a parameter'
                owners[id(parameter)] = group
    assert set(owners) == {id(p) for p in model.parameters()}
    with pytest.raises(ValueError, match='unknown parameter groups'):
        check_groups(['decoder', 'llm'])


def test_pretrained_decoder_frozen_by_default():
    config = load_config('smollm2')
    assert default_frozen(config) == ('embeddings', 'decoder')
    assert default_frozen(dataclasses.replace(config, decoder=dataclasses.replace(
        config.decoder, freeze_pretrained=False))) == ()
    assert default_frozen(load_config('tiny')) == ()
