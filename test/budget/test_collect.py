"""Calibration collection with the real (tiny, random-init) model on a CALVIN-format dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deer_ros.benchmark.dataset import FRAME_SHAPES, Annotation, CalvinDatasetWriter, LanguageWindows
from deer_ros.budget.calibration import CalibrationData, calibration_path, checkpoint_sha256
from deer_ros.budget.collect import collect_calibration, default_positions, history_exits, window_consistency
from deer_ros.budget.exit_criterion import exit_consistency
from deer_ros.budget.solver import solve_average_budget
from deer_ros.model import DeerVLA, load_config, load_model
from deer_ros.model.builder import with_first_exit_reference
from deer_ros.model.tokenization import InstructionEncoder

WINDOW = 6


@pytest.fixture(scope='module')
def model() -> DeerVLA:
    torch.manual_seed(0)
    model = DeerVLA(load_config('tiny')).eval()
    with torch.no_grad():  # open the zero-initialised gates so images reach the decoder
        for block in model.cross_attention:
            block.attention_gate.fill_(1.0)
            block.feed_forward_gate.fill_(1.0)
    return model


@pytest.fixture(scope='module')
def windows(tmp_path_factory) -> LanguageWindows:
    root = tmp_path_factory.mktemp('calvin')
    rng = np.random.default_rng(0)
    with CalvinDatasetWriter(root, compress=False) as writer:
        for episode in range(2):
            frames = {key: (rng.integers(0, 256, (16, *shape), dtype=np.uint8) if key.startswith('rgb_')
                            else rng.uniform(-1, 1, (16, *shape))) for key, shape in FRAME_SHAPES.items()}
            writer.add_episode('validation', frames, [Annotation(0, 15, 'open the drawer', 'open_drawer')])
    return LanguageWindows(root / 'validation', window=WINDOW, stride=2, keys=('rgb_static', 'rgb_gripper'))


def test_batched_values_match_a_step_by_step_reference(model):
    """Branching one LSTM state per exit must equal stepping the head sample by sample."""
    rng = np.random.default_rng(1)
    features = torch.randn(3, WINDOW, model.num_exits, model.config.decoder.hidden_size)
    exits = history_exits(rng, (3, WINDOW), model.num_exits)
    positions = (0, 2, 4)
    values = window_consistency(model, features, exits, positions, 'rms').reshape(3, 3, -1)
    assert exits.min() >= 1
    with torch.no_grad():
        for b in range(3):
            for p, s in enumerate(positions):
                state = None
                for t in range(s):
                    state = model.action_head(features[b, t, exits[b, t]].view(1, 1, -1), state).state
                poses = torch.cat([model.action_head(features[b, s, k].view(1, 1, -1), state).pose[0]
                                   for k in range(model.num_exits)]).double().numpy()
                np.testing.assert_allclose(values[b, p], exit_consistency(poses), rtol=1e-5, atol=1e-7)


def test_collect_save_load_and_solve(model, windows, tmp_path):
    instruction_encoder = InstructionEncoder(model.config.decoder)
    model.save_pretrained(tmp_path / 'ckpt')
    digest = checkpoint_sha256(tmp_path / 'ckpt')
    data = collect_calibration(model, instruction_encoder, windows, batch_size=4, progress=False,
                               metadata={'checkpoint_sha256': digest})
    positions = default_positions(WINDOW)
    assert data.values.shape == (len(windows) * len(positions), model.num_exits)
    assert data.exit_layers == model.exit_layers and data.metadata['window_size'] == WINDOW
    assert np.all(data.values[:, 1:] > 0)
    path = data.save(calibration_path(tmp_path / 'ckpt'))
    assert path == tmp_path / 'ckpt' / 'calibration.npz'
    loaded = CalibrationData.load(path, checkpoint_sha256=checkpoint_sha256(tmp_path / 'ckpt'),
                                  exit_layers=model.exit_layers)
    np.testing.assert_array_equal(loaded.values, data.values)
    again = collect_calibration(model, instruction_encoder, windows, batch_size=3, progress=False)
    np.testing.assert_allclose(again.values, data.values, rtol=1e-5)  # same seed, other batching
    costs = np.arange(1.0, model.num_exits + 1)
    result = solve_average_budget(data.values, costs, 3.5, tolerance=0.1)
    assert abs(result.realised_cost - 3.5) <= 0.35


def test_bad_positions_rejected(model, windows):
    with pytest.raises(ValueError, match='positions'):
        collect_calibration(model, InstructionEncoder(model.config.decoder), windows, positions=[WINDOW],
                            progress=False)


def test_calibrate_command_writes_beside_the_weights(model, windows, tmp_path, capsys):
    from deer_ros.cli import main
    model.save_pretrained(tmp_path / 'ckpt')
    assert main(['calibrate', '--checkpoint', str(tmp_path / 'ckpt'), '--data', str(windows.split_dir),
                 '--window', str(WINDOW), '--stride', '4', '--max-windows', '3']) == 0
    data = CalibrationData.load(tmp_path / 'ckpt' / 'calibration.npz',
                                checkpoint_sha256=checkpoint_sha256(tmp_path / 'ckpt'))
    assert data.metadata['num_windows'] == 3
    assert 'feasible average LLM budget' in capsys.readouterr().out


def test_the_reference_fills_column_0_and_leaves_the_other_columns(model):
    """With reference features, column 0 is exit 0 against the reference from the same history; 1.. unchanged."""
    rng = np.random.default_rng(2)
    features = torch.randn(2, WINDOW, model.num_exits, model.config.decoder.hidden_size)
    reference = torch.randn(2, WINDOW, model.config.decoder.hidden_size)
    exits = history_exits(rng, (2, WINDOW), model.num_exits, first_exit_checked=True)
    positions = (1, 4)
    values = window_consistency(model, features, exits, positions, 'rms', reference).reshape(2, 2, -1)
    plain = window_consistency(model, features, exits, positions, 'rms').reshape(2, 2, -1)
    np.testing.assert_allclose(values[..., 1:], plain[..., 1:], rtol=1e-6)
    assert np.all(np.isnan(plain[..., 0])) and exits.min() == 0  # the rule can choose exit 0: so can histories
    with torch.no_grad():
        for b in range(2):
            for p, s in enumerate(positions):
                state = model.action_head(features[b, :s][torch.arange(s), exits[b, :s]][None]).state
                poses = [model.action_head(step.view(1, 1, -1), state).pose[0, 0].double().numpy()
                         for step in (reference[b, s], features[b, s, 0])]
                np.testing.assert_allclose(values[b, p, 0], exit_consistency(np.stack(poses))[1], rtol=1e-5)


def test_a_model_with_the_first_exit_reference_is_calibrated_on_exit_0(model, windows):
    referenced = with_first_exit_reference(model).eval()
    data = collect_calibration(referenced, InstructionEncoder(model.config.decoder), windows, batch_size=4,
                               progress=False)
    assert data.first_exit_checked and np.all(np.isfinite(data.values)) and np.all(data.values > 0)
    assert data.metadata['history_exits'] == 'uniform over exits 0..n-1'
    costs = np.arange(1.0, model.num_exits + 1)
    result = solve_average_budget(data.values, costs, 1.5, tolerance=0.1)  # below exit 1's cost of 2
    assert result.exit_histogram[0] > 0 and result.realised_cost < 2.0


def test_calibrate_switches_the_reference_on_into_a_new_checkpoint(model, windows, tmp_path, capsys):
    from deer_ros.cli import main
    model.save_pretrained(tmp_path / 'ckpt')
    before = checkpoint_sha256(tmp_path / 'ckpt')
    args = ['calibrate', '--checkpoint', str(tmp_path / 'ckpt'), '--data', str(windows.split_dir),
            '--window', str(WINDOW), '--stride', '4', '--max-windows', '3']
    assert main(args + ['--first-exit-reference', str(tmp_path / 'referenced')]) == 0
    switched = load_model(tmp_path / 'referenced')
    assert switched.config.first_exit_reference and not load_model(tmp_path / 'ckpt').config.first_exit_reference
    for name, tensor in model.state_dict().items():
        assert torch.equal(switched.state_dict()[name], tensor), name
    data = CalibrationData.load(tmp_path / 'referenced' / 'calibration.npz',
                                checkpoint_sha256=checkpoint_sha256(tmp_path / 'referenced'))
    assert data.first_exit_checked
    assert checkpoint_sha256(tmp_path / 'ckpt') == before and not (tmp_path / 'ckpt' / 'calibration.npz').exists()
    assert 'median consistency, exits 1..' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='a new directory'):
        main(args + ['--first-exit-reference', str(tmp_path / 'ckpt')])
