"""Loss terms, mixed-exit histories, which parameters each stage trains, and the optimizer setup."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from train_fixtures import small_config
from deer_ros.model import DeerVLA, load_config
from deer_ros.model.modeling_deer import HeadOutput
from deer_ros.model.tokenization import InstructionEncoder
from deer_ros.train.config import TrainConfig
from deer_ros.train.data import TASK_NAMES, UNKNOWN_TASK
from deer_ros.train.heads import gather_exits, per_step_exits, switching_exits
from deer_ros.train.losses import action_loss
from deer_ros.train.objective import MultiExitObjective
from deer_ros.train.optim import build_optimizer, lr_factor
from deer_ros.train.parameters import GROUPS, check_groups, decay_split, default_frozen, group_modules


def test_action_loss_is_huber_plus_weighted_bce():
    rng = np.random.default_rng(0)
    pose, target = rng.uniform(-1, 1, (2, 5, 6)), rng.uniform(-1, 1, (2, 5, 6))
    pose[0, 0, 0], target[0, 0, 0] = 1.0, -1.0  # one error above Huber's delta of 1
    logits, gripper = rng.normal(size=(2, 5)) * 3, rng.integers(0, 2, (2, 5)).astype(float)
    error = np.abs(pose - target)
    huber = np.where(error <= 1, 0.5 * error ** 2, error - 0.5).mean()
    probability = 1 / (1 + np.exp(-logits))
    bce = -(gripper * np.log(probability) + (1 - gripper) * np.log(1 - probability)).mean()
    output = HeadOutput(torch.tensor(pose), torch.tensor(logits), (torch.zeros(1), torch.zeros(1)))
    loss = action_loss(output, torch.tensor(target), torch.tensor(gripper), gripper_weight=0.01)
    assert float(loss) == pytest.approx(huber + 0.01 * bce, rel=1e-6)


def test_mixed_exit_histories():
    generator = torch.Generator().manual_seed(0)
    s1 = per_step_exits(400, 12, 6, generator)
    assert s1.shape == (400, 12) and set(s1.unique().tolist()) == set(range(6))
    s2 = switching_exits(400, 12, 6, generator)
    assert s2.min() >= 0 and s2.max() < 6
    changes = (s2[:, 1:] != s2[:, :-1]).sum(dim=1)
    assert changes.max() == 1 and changes.sum() > 200  # at most one switch per window, most windows switch
    switch_points = {int(row.nonzero()[0]) + 1 for row in (s2[:, 1:] != s2[:, :-1]) if row.any()}
    assert switch_points == set(range(1, 12))
    features = torch.randn(400, 12, 6, 5)
    picked = gather_exits(features, s1)
    torch.testing.assert_close(picked[3, 7], features[3, 7, s1[3, 7]])


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


def _batch(model: DeerVLA, windows: int = 2, steps: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    text_input, mask = InstructionEncoder(model.config.decoder)(['open the drawer', 'lift the red block'][:windows])
    return {'rgb_static': torch.randint(0, 256, (windows, steps, 200, 200, 3), dtype=torch.uint8, generator=generator),
            'rgb_gripper': torch.randint(0, 256, (windows, steps, 84, 84, 3), dtype=torch.uint8, generator=generator),
            'pose': torch.rand(windows, steps, 6, generator=generator) * 2 - 1,
            'gripper': torch.randint(0, 2, (windows, steps), generator=generator).float(),
            'robot_obs': torch.randn(windows, steps, 15, generator=generator), 'text_input': text_input, 'text_mask': mask,
            'task': torch.tensor([TASK_NAMES.index('open_drawer'), UNKNOWN_TASK][:windows])}


def _backward(objective: MultiExitObjective) -> dict[str, torch.Tensor]:
    batch = _batch(objective.model)
    generator = torch.Generator().manual_seed(1)
    terms = objective(batch, per_step_exits(2, 3, objective.model.num_exits, generator),
                      switching_exits(2, 3, objective.model.num_exits, generator))
    torch.stack(list(terms.values())).sum().backward()
    return terms


def _grad_norm(modules) -> float:
    return sum(float(p.grad.norm()) for module in modules for p in module.parameters() if p.grad is not None)


def _open_gates(model: DeerVLA) -> DeerVLA:
    with torch.no_grad():  # gates start at 0, which blocks the visual path's gradient from the action loss
        for block in model.cross_attention:
            block.attention_gate.fill_(0.5)
            block.feed_forward_gate.fill_(0.5)
    return model


@pytest.fixture()
def objective() -> MultiExitObjective:
    torch.manual_seed(0)
    return MultiExitObjective(_open_gates(DeerVLA(small_config())))


def test_joint_stage_trains_backbone_and_every_head(objective):
    objective.set_stage('joint', frozen=('embeddings',))
    terms = _backward(objective)
    assert set(terms) == {'exit0', 'exit1', 'exit2', 's1', 's2'}
    model = objective.model
    for group in GROUPS:
        modules = list(group_modules(model, [group]))
        if group == 'embeddings':
            assert all(p.grad is None and not p.requires_grad for m in modules for p in m.parameters())
        else:
            assert all(p.grad is not None for m in modules for p in m.parameters()), group
            assert _grad_norm(modules) > 0, group
    for head in objective.aux_heads:
        assert _grad_norm([head]) > 0


def test_heads_stage_trains_only_the_shared_head(objective):
    objective.set_stage('heads')
    assert not objective.model.vision_encoders.training and objective.model.action_head.training
    terms = _backward(objective)
    assert set(terms) == {'s1', 's2'}
    assert _grad_norm([objective.model.action_head]) > 0
    others = [p for name, p in objective.named_parameters() if not name.startswith('model.action_head.')]
    assert all(p.grad is None and not p.requires_grad for p in others)
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


@pytest.mark.parametrize('state_weight', [0.0, 0.5])
def test_state_probe_reaches_the_vision_stack_behind_closed_gates(state_weight):
    torch.manual_seed(0)
    objective = MultiExitObjective(DeerVLA(small_config()), state_weight=state_weight)  # gates at 0
    objective.set_stage('joint')
    terms = _backward(objective)
    vision_grad = _grad_norm([objective.model.vision_encoders, objective.model.resamplers])
    if state_weight:
        assert 'state' in terms and _grad_norm([objective.state_probe]) > 0 and vision_grad > 0
    else:
        assert 'state' not in terms and objective.state_probe is None and vision_grad == 0


@pytest.mark.parametrize('tokenizer', ['byte', 'minilm'])
def test_task_probe_trains_the_instruction_path_and_ignores_unknown_tasks(tokenizer):
    torch.manual_seed(0)
    config = small_config()
    config.decoder.tokenizer = tokenizer
    objective = MultiExitObjective(DeerVLA(config), task_weight=1.0)
    objective.set_stage('joint')
    terms = _backward(objective)
    assert 'task' in terms and torch.isfinite(terms['task'])
    text_input = objective.model.embed_tokens or objective.model.text_proj  # token embeddings or the states' projection
    assert _grad_norm([objective.task_probe]) > 0 and _grad_norm([objective.model.layers, text_input]) > 0
    assert objective.task_probe in objective.training_heads()
    features = torch.randn(2, 3, objective.model.num_exits, objective.model.config.decoder.hidden_size)
    only_known = objective.task_probe.loss(features[:1], torch.tensor([0]))
    torch.testing.assert_close(objective.task_probe.loss(features, torch.tensor([0, UNKNOWN_TASK])), only_known)


def test_state_probe_in_training_state_and_out_of_the_heads_stage():
    torch.manual_seed(0)
    objective = MultiExitObjective(DeerVLA(small_config()), state_weight=1.0)
    objective.state_probe.set_statistics(torch.full((15,), 2.0), torch.full((15,), 3.0))
    state = objective.training_state()
    assert {'state_probe.mean', 'state_probe.linear.weight'} <= set(state)
    assert not any(name.startswith('model.') for name in state)
    torch.manual_seed(1)
    other = MultiExitObjective(DeerVLA(small_config()), state_weight=1.0)
    other.load_training_state(state)
    torch.testing.assert_close(other.state_probe.linear.weight, objective.state_probe.linear.weight)
    assert float(other.state_probe.std[0]) == 3.0
    with pytest.raises(RuntimeError):
        MultiExitObjective(DeerVLA(small_config())).load_training_state(state)
    objective.set_stage('heads')
    assert set(_backward(objective)) == {'s1', 's2'} and objective.state_probe.linear.weight.grad is None
