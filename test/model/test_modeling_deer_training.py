"""The training wrapper next to the model: loss terms, mixed-exit histories, what each stage trains, the probes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from small_models import small_config

from deer_ros.model import DeerVLA
from deer_ros.model.modeling_deer import HeadOutput
from deer_ros.model.modeling_deer_training import (
    UNKNOWN_TASK,
    MultiExitObjective,
    action_loss,
    gather_exits,
    per_step_exits,
    switching_exits,
)
from deer_ros.model.parameter_groups import GROUPS, group_modules
from deer_ros.model.tokenization import InstructionEncoder
from deer_ros.train.data import TASK_NAMES


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


def _batch(model: DeerVLA, windows: int = 2, steps: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    text_input, mask = InstructionEncoder(model.config.decoder)(['open the drawer', 'lift the red block'][:windows])
    return {'rgb_static': torch.randint(0, 256, (windows, steps, 200, 200, 3), dtype=torch.uint8, generator=generator),
            'rgb_gripper': torch.randint(0, 256, (windows, steps, 84, 84, 3), dtype=torch.uint8, generator=generator),
            'pose': torch.rand(windows, steps, 6, generator=generator) * 2 - 1,
            'gripper': torch.randint(0, 2, (windows, steps), generator=generator).float(),
            'robot_obs': torch.randn(windows, steps, 15, generator=generator),
            'text_input': text_input, 'text_mask': mask,
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
    objective = MultiExitObjective(DeerVLA(config), task_weight=1.0, num_tasks=len(TASK_NAMES))
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
