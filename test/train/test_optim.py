"""AdamW parameter groups of each stage, weight decay on weight matrices only, and the lr schedule."""
from __future__ import annotations

import pytest
import torch
from small_models import small_config

from deer_ros.model import DeerVLA
from deer_ros.model.modeling_deer_training import MultiExitObjective
from deer_ros.train.config import TrainConfig
from deer_ros.train.optim import build_optimizer, decay_split, lr_factor


@pytest.fixture()
def objective() -> MultiExitObjective:
    torch.manual_seed(0)
    return MultiExitObjective(DeerVLA(small_config()))


def test_heads_stage_optimizer_holds_only_the_shared_head(objective):
    objective.set_stage('heads')
    optimizer = build_optimizer(objective, TrainConfig(data='-', output='-', head_stage_lr=1e-3))
    trained = {id(p) for group in optimizer.param_groups for p in group['params']}
    assert trained == {id(p) for p in objective.model.action_head.parameters()}
    assert {group['lr'] for group in optimizer.param_groups} == {1e-3}


def test_joint_optimizer_groups_and_decay(objective):
    objective.set_stage('joint', frozen=('decoder',))
    config = TrainConfig(data='-', output='-', lr=1e-3, head_lr_scale=0.25, weight_decay=0.1)
    optimizer = build_optimizer(objective, config)
    lr_of = {id(p): (group['lr'], group['weight_decay']) for group in optimizer.param_groups for p in group['params']}
    model = objective.model
    assert lr_of[id(model.cross_attention[0].attention.q_proj.weight)] == (1e-3, 0.1)
    assert lr_of[id(model.cross_attention[0].attention_gate)] == (1e-3, 0.0)
    assert lr_of[id(model.action_head.lstm.cells[0].weight_hh)] == (2.5e-4, 0.1)
    assert lr_of[id(objective.aux_heads[1].input_norm.weight)] == (2.5e-4, 0.0)
    assert not any(id(p) in lr_of for p in model.layers.parameters())
    decayed, other = decay_split([model.resamplers])
    assert id(model.resamplers['static'].latents) in {id(p) for p in other}
    assert all(p.ndim == 2 for p in decayed)


def test_lr_schedule():
    assert [lr_factor(s, 4, 10, 'constant') for s in (0, 3, 4, 9)] == [0.25, 1.0, 1.0, 1.0]
    assert lr_factor(4, 4, 10, 'cosine') == pytest.approx(1.0)
    assert lr_factor(7, 4, 10, 'cosine') == pytest.approx(0.5)
    assert lr_factor(10, 4, 10, 'cosine') == pytest.approx(0.0)
