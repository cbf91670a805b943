"""deer-ros import-upstream on a small synthetic checkpoint laid out like upstream's, and every way it refuses inputs.

The synthetic files follow upstream's layouts (read from its code; see
docs/upstream_checkpoints.md): a ``torch.save`` dict with the training
settings, optimizer state, cached ``values`` and a ``model_state_dict`` of
the trainable tensors under ``module.`` with the saver's alias copies
(``old_decoder_blocks`` holding the frozen MPT blocks, ``gated_cross_attn_layers``
the cross-attention again) and the training-only heads; MPT's Hugging Face
directory (MosaicGPT key names, config.json, GPT-NeoX-style tokenizer); an
open_clip state dict with its text tower. Sizes are deer-vla-3b's structure
at a CPU-friendly width.
"""
from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from deer_vla_helpers import INSTRUCTIONS, tiny_config, tiny_model, write_tokenizer
from nodes.policy_driver import FAST_POLICY, PolicyDriver
from ros_helpers import BackgroundSpinner
from safetensors.torch import save_file

from deer_ros.budget.calibration import CalibrationData, calibration_path, checkpoint_sha256
from deer_ros.budget.caps import Budget
from deer_ros.budget.exit_criterion import first_exits
from deer_ros.budget.refined import load_refined, refined_path
from deer_ros.budget.upstream_values import upstream_thresholds
from deer_ros.cli import main
from deer_ros.model import DeerConfig, load_config, load_model
from deer_ros.model.configuration_deer_vla import DeerVLAConfig, load_deer_vla_config
from deer_ros.model.conversion_deer_vla import CLIP_QKV, to_upstream_name
from deer_ros.model.family import checkpoint_config, instruction_encoder_for
from deer_ros.model.modeling_deer_vla import DeerVLAFlamingo
from deer_ros.model.upstream_checkpoint import check_mpt, import_upstream
from deer_ros.model.upstream_files import MptDirectory, UpstreamImportError
from deer_ros.policy.runtime import PolicyRuntime, synthetic_calibration

SETTINGS = {'epoch': 3, 'head_type': 'deterministic', 'early_exit_layer': 5, 'multi_exit': True, 'share_exit': False,
            'exit_interval': 2, 'exit_dropout': 0.4, 'lstm_dropout': 0.3, 'dropout_mode': 'layerwise',
            'mlp_layernorm': True, 'lstm_layernorm': True, 'mlp_num_hidden_layers': 2, 'lstm_num_layers': 2,
            'pooling': 'max', 'precision': 'fp32'}
NUM_VALUES = 240


def upstream_tensors(model: DeerVLAFlamingo) -> dict[str, torch.Tensor]:
    """The model's tensors under canonical upstream names (CLIP's q/k/v stacked into ``in_proj``)."""
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in model.state_dict().items():
        part = next((p for p in CLIP_QKV if f'.{p}_proj.' in name), '')  # open_clip stacks q, k, v in that order
        tensors.setdefault(to_upstream_name(name, model.config), {})[part] = tensor.clone()
    return {name: torch.cat([parts[p] for p in CLIP_QKV]) if len(parts) == 3 else parts[''] for name, parts in
            tensors.items()}


def upstream_values(seed: int = 1) -> torch.Tensor:
    """Cached consistency values as upstream stores them: (exits, samples), first row larger (T1 >> T2.. upstream)."""
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 0.004, (3, NUM_VALUES))
    values[0] *= 6
    return torch.from_numpy(values).float()


class UpstreamFiles:
    """A synthetic upstream checkpoint, MPT directory and CLIP file of one small model, written under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mpt = root / 'mpt-1b-redpajama-200b-dolly'
        self.mpt.mkdir(parents=True)
        vocab = write_tokenizer(self.mpt)
        self.config = tiny_config(None, base_vocab=vocab)
        self.model = tiny_model(self.config)
        self.config_file = root / 'tiny-vla.json'
        self.config.save(self.config_file)
        self.tensors = upstream_tensors(self.model)
        self.values = upstream_values()
        self.checkpoint = root / 'DeeR_task_D_D_tiny.pth'
        self.clip = root / 'open_clip_pytorch_model.bin'
        self.write_checkpoint(self.state_dict())
        self.write_mpt(safetensors=False)
        self.write_clip()

    def state_dict(self, *, old_decoder_blocks: bool = True) -> OrderedDict:
        """``model_state_dict`` as upstream's saver leaves it: trainable tensors twice named, frozen blocks once."""
        state: OrderedDict = OrderedDict()
        for name, tensor in self.tensors.items():
            if name.startswith('vision_encoder.'):
                continue  # frozen, first name only: deleted by the saver
            block = name.split('.decoder_layer.')
            if len(block) == 2:  # frozen MPT block: survives under its alias only
                if old_decoder_blocks:
                    index = block[0].rsplit('.', 1)[1]
                    state[f'module.lang_encoder.old_decoder_blocks.{index}.{block[1]}'] = tensor.clone()
                continue
            state[f'module.{name}'] = tensor
            if '.gated_cross_attn_layer.' in name:
                index, rest = name.split('.blocks.')[1].split('.gated_cross_attn_layer.')
                state[f'module.lang_encoder.gated_cross_attn_layers.{index}.{rest}'] = tensor.clone()
            if name.startswith('extra_exit.'):  # training heads: the final head and an auxiliary exit
                state[f'module.lm_head.{name[11:]}'] = torch.randn_like(tensor)
                state[f'module.lm_exit_modules.0.{name[11:]}'] = torch.randn_like(tensor)
        return state

    def write_checkpoint(self, state: dict, path: Path | None = None, **changes: object) -> Path:
        optimizer = {'state': {0: {'step': torch.tensor(10.0), 'exp_avg': torch.zeros(4)}},
                     'param_groups': [{'lr': 1e-4, 'betas': (0.9, 0.999), 'weight_decay': 0.1, 'params': [0]}]}
        content = {**SETTINGS, 'model_state_dict': state, 'optimizer_state_dict': optimizer,
                   'lr_scheduler_state_dict': {'last_epoch': 10, 'lr_lambdas': [None], '_step_count': 11},
                   'values': self.values, **changes}
        torch.save({key: value for key, value in content.items() if value is not None}, path or self.checkpoint)
        return path or self.checkpoint

    def write_mpt(self, *, safetensors: bool) -> None:
        """HF MosaicGPT-1B layout at this width: all 8 layers (2 past the cut), padded embeddings, final norm."""
        decoder = self.config.decoder
        (self.mpt / 'config.json').write_text(json.dumps({
            'model_type': 'mosaic_gpt', 'd_model': decoder.d_model, 'n_heads': decoder.n_heads,
            'n_layers': decoder.num_layers, 'mlp_ratio': decoder.expansion_ratio, 'attn_qk_ln': True,
            'alibi': True, 'vocab_size': 384}))
        state = {'transformer.wte.weight': torch.randn(384, decoder.d_model),
                 'transformer.ln_f.weight': torch.ones(decoder.d_model)}
        for name, tensor in self.tensors.items():
            if '.decoder_layer.' in name:
                state['transformer.' + name.split('transformer.')[1].replace('decoder_layer.', '')] = tensor
        for index in range(self.config.kept_layers, decoder.num_layers):
            for key in [k for k in state if k.startswith('transformer.blocks.0.')]:
                state[key.replace('blocks.0.', f'blocks.{index}.')] = torch.randn_like(state[key])
        for old in self.mpt.glob('*model*'):
            old.unlink()
        if safetensors:
            save_file({key: value.contiguous() for key, value in state.items()}, str(self.mpt / 'model.safetensors'))
        else:
            torch.save(state, self.mpt / 'pytorch_model.bin')

    def write_clip(self, path: Path | None = None) -> Path:
        """open_clip's state dict: the vision tower under ``visual.`` and a text tower deer_ros does not use."""
        state = {name.removeprefix('vision_encoder.'): tensor for name, tensor in self.tensors.items()
                 if name.startswith('vision_encoder.')}
        state.update({'visual.proj': torch.randn(32, 16), 'token_embedding.weight': torch.randn(10, 16),
                      'transformer.resblocks.0.ln_1.weight': torch.ones(16), 'logit_scale': torch.tensor(4.6)})
        torch.save(state, path or self.clip)
        return path or self.clip

    def arguments(self, output: Path, *extra: str) -> list[str]:
        return ['import-upstream', '--checkpoint', str(self.checkpoint), '--mpt', str(self.mpt), '--clip',
                str(self.clip), '--output', str(output), '--config', str(self.config_file), *extra]

    def run(self, output: Path, **kwargs) -> object:
        options = {'checkpoint': self.checkpoint, 'mpt': self.mpt, 'clip': self.clip, 'output': output,
                   'config': self.config, **kwargs}
        return import_upstream(options.pop('checkpoint'), options.pop('mpt'), options.pop('clip'),
                               options.pop('output'), **options)


@pytest.fixture(scope='module')
def files(tmp_path_factory: pytest.TempPathFactory) -> UpstreamFiles:
    return UpstreamFiles(tmp_path_factory.mktemp('upstream'))


@pytest.fixture(scope='module')
def imported(files: UpstreamFiles, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The synthetic checkpoint imported through the command line, with upstream's thresholds for q = 1.5."""
    output = tmp_path_factory.mktemp('imported') / 'deer-vla-tiny'
    capture = tmp_path_factory.mktemp('stdout') / 'out.txt'
    with open(capture, 'w') as stream, contextlib.redirect_stdout(stream):
        assert main(files.arguments(output, '--exit-ratio', '1.5')) == 0
    return output, capture.read_text()


def _step_outputs(model: DeerVLAFlamingo, encoder, seed: int = 0) -> list[torch.Tensor]:
    """Exit features and the head's pose at every exit for one random observation (reference pass included)."""
    rng = np.random.default_rng(seed)
    static = torch.from_numpy(rng.integers(0, 256, (1, 200, 200, 3), dtype=np.uint8))
    gripper = torch.from_numpy(rng.integers(0, 256, (1, 84, 84, 3), dtype=np.uint8))
    text, mask = encoder([INSTRUCTIONS[0]])
    with torch.no_grad():
        visual = model.encode_vision(static, gripper)
        features = [feature for _, feature in model.iter_exit_features(visual, text, mask, reference=True)]
        return features + [model.action_head(feature.unsqueeze(1)).pose for feature in features]


def test_import_round_trips_weights_outputs_and_settings(files: UpstreamFiles, imported: tuple[Path, str]) -> None:
    output, printed = imported
    assert {'config.json', 'model.safetensors', 'calibration.npz', 'tokenizer', 'refined_thresholds.json'} <= \
        {path.name for path in output.iterdir()}
    model = load_model(output)
    assert isinstance(model, DeerVLAFlamingo)
    expected = DeerVLAConfig.from_dict({**files.config.to_dict(), 'decoder': {
        **files.config.to_dict()['decoder'], 'tokenizer_path': str((output / 'tokenizer').resolve())}})
    assert model.config == expected  # every setting read back from the checkpoint's top-level keys
    original = files.model.state_dict()
    assert all(torch.equal(tensor, original[name]) for name, tensor in model.state_dict().items())
    assert set(model.state_dict()) == set(original)
    ours = _step_outputs(model, instruction_encoder_for(model.config))
    reference_encoder = instruction_encoder_for(DeerVLAConfig.from_dict({**files.config.to_dict(), 'decoder': {
        **files.config.to_dict()['decoder'], 'tokenizer_path': str(files.mpt)}}))
    theirs = _step_outputs(files.model, reference_encoder)
    for a, b in zip(ours, theirs):  # equal weights; the CPU kernels may round differently by memory alignment
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # the report: aliases folded, training heads and MPT's extra parts named as unused, nothing unexpected
    assert 'alias copies in the checkpoint folded' in printed
    for phrase in ("DeeR's training-only heads", "CLIP's text tower", 'decoder layers past the last exit',
                   "MPT's own token embeddings", "MPT's final norm", 'ros2 run deer_ros policy_node'):
        assert phrase in printed, printed
    assert 'ERROR' not in printed


def test_cached_values_become_calibration_and_upstream_thresholds(files: UpstreamFiles,
                                                                   imported: tuple[Path, str]) -> None:
    output, printed = imported
    model = load_model(output)
    calibration = CalibrationData.load(calibration_path(output), checkpoint_sha256=checkpoint_sha256(output),
                                       exit_layers=model.exit_layers)
    upstream = files.values.double().numpy()
    assert calibration.metric == 'rms' and calibration.num_samples == NUM_VALUES
    assert np.all(np.isnan(calibration.values[:, 0]))
    assert np.array_equal(calibration.values[:, 1:], upstream[1:].T)  # exits 1..: exactly upstream's rows
    [entry] = load_refined(refined_path(output))
    thresholds = upstream_thresholds(upstream.T, 1.5)
    assert entry.thresholds == tuple(thresholds) and entry.tuning['first_exit_checked']
    runtime = PolicyRuntime(output, budget=Budget(avg_gflops=entry.avg_gflops))
    criterion = runtime.thresholds.solution.criterion
    assert criterion.first_exit_checked and np.array_equal(criterion.thresholds, thresholds)
    exits = first_exits(upstream.T, thresholds, first_exit_checked=True)
    assert entry.average_cost == pytest.approx(np.mean(np.asarray(runtime.cost_table.llm_gflops)[exits]))
    assert f'request budget.avg_gflops {entry.avg_gflops:g}' in printed
    # another budget: deer_ros's own solve on the same values (its rule never stops at the first exit)
    low = runtime.cost_table.llm_gflops[1]
    solution = runtime.thresholds.solve(Budget(avg_gflops=1.2 * low))
    assert not solution.criterion.first_exit_checked and solution.average is not None


def test_either_family_loads_by_name_file_or_directory(files: UpstreamFiles, imported: tuple[Path, str]) -> None:
    """One loading path for both families: configs by name or file, checkpoint directories, calibration."""
    output, _ = imported
    assert isinstance(load_config('deer-vla-3b'), DeerVLAConfig) and isinstance(load_config('tiny'), DeerConfig)
    fresh = load_model(files.config_file, num_exits=2)
    assert isinstance(fresh, DeerVLAFlamingo) and fresh.num_exits == 2
    assert checkpoint_config(output).decoder.tokenizer_path == str((output / 'tokenizer').resolve())
    calibration = synthetic_calibration(load_model(output), windows=4)  # budget/collect.py on a DeeR-VLA model
    # first_exit_reference (upstream's rule): column 0 is exit 0 against the layer before it, as upstream's first row
    assert calibration.values.shape[1] == 3 and calibration.first_exit_checked
    assert np.all(np.isfinite(calibration.values))


def _upstream_reference_thresholds(values: np.ndarray, ratio: float) -> np.ndarray:
    """Upstream's set_threshold loop, sample by sample over each row sorted ascending (values: (exits, N))."""
    count_exits, count = values.shape
    probs = ratio ** np.arange(1, count_exits + 1)
    probs = probs / probs.sum()
    order = np.argsort(values, axis=1, kind='stable')
    done = np.zeros(count)
    result = np.full(count_exits, -1e8)
    for k in range(count_exits - 1):
        seen, target = 0, int(np.floor(count * probs[k]))
        for index in order[k]:
            if done[index] == 0:
                seen += 1
                if seen == target:
                    result[k] = values[k, index]
                    break
        done += values[k] <= result[k]
    result[-1] = 1e8
    return result


@pytest.mark.parametrize('ratio', [0.3, 0.8, 1.5])
def test_upstream_thresholds_follow_upstreams_loop(ratio: float) -> None:
    values = upstream_values(seed=2).double().numpy()
    ours = upstream_thresholds(values.T, ratio)
    reference = _upstream_reference_thresholds(values, ratio)
    assert np.array_equal(np.where(np.isinf(ours), np.sign(ours) * 1e8, ours), reference)


def test_frozen_blocks_come_from_the_mpt_directory_when_the_checkpoint_lacks_them(files: UpstreamFiles,
                                                                                    tmp_path: Path) -> None:
    checkpoint = files.write_checkpoint(files.state_dict(old_decoder_blocks=False), tmp_path / 'no_blocks.pth')
    files.write_mpt(safetensors=True)
    try:
        result = files.run(tmp_path / 'out', checkpoint=checkpoint)
    finally:
        files.write_mpt(safetensors=False)
    assert result.report.used['--mpt'] == sum('.decoder_layer.' in name for name in files.tensors)
    model = load_model(result.output)
    assert all(torch.equal(tensor, files.model.state_dict()[name]) for name, tensor in model.state_dict().items())


def test_openflamingo_file_fills_what_the_checkpoint_lacks(files: UpstreamFiles, tmp_path: Path) -> None:
    state = files.state_dict()
    perceiver = {key: state.pop(key) for key in [k for k in state if k.startswith('module.perceiver.')]}
    checkpoint = files.write_checkpoint(state, tmp_path / 'no_perceiver.pth')
    with pytest.raises(UpstreamImportError, match=r'missing tensor perceiver\..*--openflamingo'):
        files.run(tmp_path / 'out', checkpoint=checkpoint)
    assert not (tmp_path / 'out').exists()  # nothing written
    openflamingo = tmp_path / 'checkpoint.pt'
    torch.save({key.removeprefix('module.'): value for key, value in perceiver.items()}, openflamingo)
    result = files.run(tmp_path / 'out', checkpoint=checkpoint, openflamingo=openflamingo)
    assert result.report.used['--openflamingo'] == len(perceiver)


def _expect(error: str, files: UpstreamFiles, tmp_path: Path, **inputs: object) -> str:
    with pytest.raises(UpstreamImportError, match=error) as raised:
        files.run(tmp_path / 'out', **inputs)
    assert not (tmp_path / 'out').exists() and not list(tmp_path.glob('.out.importing-*'))
    assert 'pass' in str(raised.value)  # every refusal says what to pass instead
    return str(raised.value)


def test_wrong_checkpoint_files(files: UpstreamFiles, tmp_path: Path) -> None:
    _expect('no such file', files, tmp_path, checkpoint=tmp_path / 'missing.pth')
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(files.checkpoint.read_bytes()[:5000])
    _expect('truncated or not a PyTorch checkpoint', files, tmp_path, checkpoint=truncated)
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    _expect('is empty', files, tmp_path, checkpoint=empty)
    as_safetensors = tmp_path / 'model.safetensors'
    save_file({'a': torch.zeros(2)}, str(as_safetensors))
    _expect('is a safetensors file', files, tmp_path, checkpoint=as_safetensors)
    _expect('holds no DeeR exit head', files, tmp_path, checkpoint=files.clip)
    openflamingo_like = tmp_path / 'checkpoint.pt'
    torch.save({k: v for k, v in files.state_dict().items() if not k.startswith('module.extra_exit')},
               openflamingo_like)
    _expect('looks like an OpenFlamingo checkpoint: pass that as --openflamingo', files, tmp_path,
            checkpoint=openflamingo_like)


class _Payload:
    """What a crafted checkpoint would smuggle in: unpickling it would call ``os.system``."""

    def __reduce__(self):
        import os
        return os.system, ('touch /tmp/deer_ros_pwned',)


def test_a_crafted_pickle_is_refused_not_run(files: UpstreamFiles, tmp_path: Path) -> None:
    crafted = files.write_checkpoint(files.state_dict(), tmp_path / 'crafted.pth', extra=_Payload())
    message = _expect('refusing to unpickle', files, tmp_path, checkpoint=crafted)
    assert 'system' in message and not Path('/tmp/deer_ros_pwned').exists()


def test_unsupported_settings_and_unexpected_tensors(files: UpstreamFiles, tmp_path: Path) -> None:
    _expect("head_type 'diffusion'", files, tmp_path,
            checkpoint=files.write_checkpoint(files.state_dict(), tmp_path / 'a.pth', head_type='diffusion'))
    _expect('evenly spaced exits', files, tmp_path,
            checkpoint=files.write_checkpoint(files.state_dict(), tmp_path / 'b.pth', early_exit_layer=4))
    _expect('do not describe a model', files, tmp_path,
            checkpoint=files.write_checkpoint(files.state_dict(), tmp_path / 'c.pth', dropout_mode='wo_last'))
    state = files.state_dict()
    state['module.perceiver_gripper.latents'] = torch.zeros(4, 32)  # RoboFlamingo's separate gripper resampler
    _expect('unexpected tensor perceiver_gripper.latents in --checkpoint', files, tmp_path,
            checkpoint=files.write_checkpoint(state, tmp_path / 'd.pth'))
    state = files.state_dict()
    state['module.lang_encoder.gated_cross_attn_layers.1.attn_gate'] = torch.ones(1)
    _expect('second copy of .* with other values', files, tmp_path,
            checkpoint=files.write_checkpoint(state, tmp_path / 'e.pth'))


def test_wrong_mpt_directories(files: UpstreamFiles, tmp_path: Path) -> None:
    _expect('no such directory', files, tmp_path, mpt=tmp_path / 'nowhere')
    bare = tmp_path / 'bare'
    bare.mkdir()
    _expect('has no config.json', files, tmp_path, mpt=bare)
    (bare / 'config.json').write_text((files.mpt / 'config.json').read_text())
    _expect('has no weight files', files, tmp_path, mpt=bare)
    (bare / 'pytorch_model.bin').write_bytes((files.mpt / 'pytorch_model.bin').read_bytes())
    _expect('has no tokenizer files', files, tmp_path, mpt=bare)
    # MPT-1B's config beside a checkpoint of another width: the error names the MPT it was trained on
    one_b = tmp_path / 'mpt-1b'
    one_b.mkdir()
    (one_b / 'config.json').write_text(json.dumps({'model_type': 'mosaic_gpt', 'd_model': 2048, 'n_heads': 16,
                                                   'n_layers': 24, 'mlp_ratio': 4, 'attn_qk_ln': True}))
    (one_b / 'pytorch_model.bin').write_bytes((files.mpt / 'pytorch_model.bin').read_bytes())
    (one_b / 'tokenizer.json').write_text((files.mpt / 'tokenizer.json').read_text())
    _expect('holds d_model 2048, 16 heads, 24 layers', files, tmp_path, mpt=one_b)
    with pytest.raises(UpstreamImportError, match=r'deer-vla-9b .*MPT d_model 4096.* pass the directory of mpt-7b'):
        check_mpt(MptDirectory.open(one_b), load_deer_vla_config('deer-vla-9b'))


@pytest.mark.filterwarnings('ignore:`torch.jit:DeprecationWarning')  # a TorchScript file is made to be refused
def test_wrong_clip_files_and_output(files: UpstreamFiles, tmp_path: Path) -> None:
    _expect('no such file', files, tmp_path, clip=tmp_path / 'ViT-L-14.pt')
    text_only = tmp_path / 'text.bin'
    torch.save({'token_embedding.weight': torch.zeros(3, 3)}, text_only)
    _expect('holds no CLIP vision tower', files, tmp_path, clip=text_only)
    scripted = tmp_path / 'jit.pt'
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    _expect('TorchScript archive', files, tmp_path, clip=scripted)
    wider = {name: tensor for name, tensor in torch.load(files.clip, weights_only=True).items()}
    wider['visual.conv1.weight'] = torch.zeros(64, 3, 14, 14)
    torch.save(wider, tmp_path / 'other_vit.bin')
    message = _expect(r'visual.conv1.weight in --clip has shape \(64, 3, 14, 14\)', files, tmp_path,
                      clip=tmp_path / 'other_vit.bin')
    assert 'nothing written' in message
    occupied = tmp_path / 'occupied'
    occupied.mkdir()
    (occupied / 'config.json').write_text('{}')
    with pytest.raises(UpstreamImportError, match='not an empty directory: pass a new directory'):
        files.run(occupied)


def test_policy_node_runs_the_imported_checkpoint_under_an_average_budget(imported: tuple[Path, str], start_node,
                                                                           rclpy_context) -> None:
    output, _ = imported
    low = PolicyRuntime(output).cost_table.llm_gflops[1]
    node = start_node('deer_ros.nodes.policy_node',
                      params={**FAST_POLICY, 'checkpoint': str(output), 'budget.avg_gflops': 1.3 * low})
    assert node.wait_for_log('ready in', 120.0), node.log
    assert 'no calibration file' not in node.log  # the budget is solved on the imported values
    driver = PolicyDriver(rclpy_context)
    try:
        with BackgroundSpinner(driver, context=driver.context):
            assert driver.wait_connected()
            driver.instruct(INSTRUCTIONS[1])
            assert node.wait_for_log(f"new instruction '{INSTRUCTIONS[1]}'", 30.0), node.log
            stats = [driver.stats_for(driver.send()) for _ in range(8)]
    finally:
        driver.destroy_node()
    assert all(s is not None for s in stats), node.log
    assert {s.num_exits for s in stats} == {3}
    assert all(1 <= s.exit_index <= 3 for s in stats)
    assert node.running()
