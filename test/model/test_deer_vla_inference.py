"""A DeeR-VLA policy step equals upstream's evaluation protocol, in both history modes, under every cap.

The reference is upstream's loop written out (``eval_utils.ModelWrapper.step``,
``value_net.ExitController`` / ``ActionValueNet``, ``DeterministicDecoder``):
the decoder runs whole, every exit's action is read from the LSTM state of
the previous step without changing it, the first exit is compared with the
action read from the layer before it, and only the chosen exit's call moves
the state on; a new instruction resets it. The replay mode's reference is
RoboFlamingo's ``refresh_window``: the LSTM re-run over the last chosen features.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from deer_vla_helpers import INSTRUCTIONS, tiny_config, tiny_model, with_config, write_tokenizer

from deer_ros.budget.exit_criterion import ExitCriterion
from deer_ros.model.flops import count_cost_table
from deer_ros.model.modeling_deer import CheckpointError
from deer_ros.model.modeling_deer_vla import DeerVLAFlamingo
from deer_ros.model.tokenization_deer_vla import FlamingoPromptEncoder
from deer_ros.policy.early_exit import EarlyExitPolicy
from deer_ros.policy.types import Observation

TOLERANCE = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope='module')
def model(tmp_path_factory) -> DeerVLAFlamingo:
    directory = tmp_path_factory.mktemp('mpt-tokenizer')
    return tiny_model(tiny_config(directory, write_tokenizer(directory)))


def _observations(count: int, seed: int) -> list[Observation]:
    rng = np.random.default_rng(seed)
    return [Observation(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                        rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)) for _ in range(count)]


def _block_features(model: DeerVLAFlamingo, observation: Observation, ids, mask) -> list[torch.Tensor]:
    """Upstream's ``output.hidden_states``, max-pooled: the raw output of every kept block, whole decoder at once."""
    visual = model.encode_vision(torch.from_numpy(observation.rgb_static)[None],
                                 torch.from_numpy(observation.rgb_gripper)[None])
    decoder = model.lang_encoder
    hidden = decoder.wte(ids)
    alibi, disallowed = decoder.attention_inputs(mask, hidden.dtype)
    features = []
    for index in range(len(decoder.blocks)):
        hidden = decoder.layer(index, hidden, visual, ids == model.config.decoder.media_token_id, alibi, disallowed)
        features.append(hidden.amax(dim=1))
    return features


class UpstreamEvaluation:
    """Upstream's per-subtask evaluation loop for one robot; ``window`` set: RoboFlamingo's window replay."""

    def __init__(self, model: DeerVLAFlamingo, thresholds, window: int | None = None, reference: bool = True) -> None:
        self.model, self.thresholds, self.window, self.reference = model, list(thresholds), window, reference
        self.encoder = FlamingoPromptEncoder(model.config.decoder)
        self.exit_blocks = [layers - 1 for layers in model.exit_layers]  # upstream's exit ids: blocks 1, 3, 5
        self.deltas: list[list[float]] = []
        self.reset()

    def reset(self) -> None:
        self.hidden_state, self.history = None, []

    def _head(self, feature: torch.Tensor, update: bool):
        if self.window is None:  # DeeR: window 1, the LSTM state carried (update_hidden_state)
            output = self.model.action_head(feature[:, None], self.hidden_state)
            if update:
                self.hidden_state = output.state
            return output.pose[0, -1], output.gripper_logit[0, -1]
        window = torch.stack(self.history[-(self.window - 1):] + [feature], dim=1) if self.window > 1 \
            else feature[:, None]
        output = self.model.action_head(window)  # refresh_window: re-run from a zero state
        if update:
            self.history.append(feature)
        return output.pose[0, -1], output.gripper_logit[0, -1]

    @torch.no_grad()
    def step(self, observation: Observation, instruction: str) -> tuple[int, np.ndarray, int]:
        ids, mask = self.encoder([instruction])
        features = _block_features(self.model, observation, ids, mask)
        previous, deltas, chosen = None, [], len(self.exit_blocks) - 1
        for exit_index, block in enumerate(self.exit_blocks):
            if previous is None and self.reference:  # ActionValueNet: pseudo action from the layer before
                previous = self._head(features[block - 1], update=False)[0]
            action = self._head(features[block], update=False)[0]
            delta = float('nan') if previous is None else float((action - previous).pow(2).mean().sqrt())
            deltas.append(delta)
            if delta <= self.thresholds[exit_index] or exit_index == len(self.exit_blocks) - 1:
                chosen = exit_index
                break
            previous = action
        self.deltas.append(deltas)
        pose, gripper_logit = self._head(features[self.exit_blocks[chosen]], update=True)
        return chosen, pose.double().numpy(), 1 if torch.sigmoid(gripper_logit) > 0.5 else -1


def _thresholds_that_mix_exits(model, window, reference, episodes) -> np.ndarray:
    """Per-exit medians of the consistency values: the rule then stops at several different exits."""
    probe = UpstreamEvaluation(model, [-np.inf] * model.num_exits, window, reference)
    for instruction, observations in episodes:
        probe.reset()
        for observation in observations:
            probe.step(observation, instruction)
    values = np.array(probe.deltas)
    thresholds = np.nanmedian(values, axis=0) if reference else np.r_[np.inf, np.nanmedian(values[:, 1:], axis=0)]
    thresholds[-1] = np.inf
    return thresholds


@pytest.mark.parametrize('mode', ['carry', 'replay'])
def test_policy_steps_equal_upstream_evaluation(model: DeerVLAFlamingo, mode: str) -> None:
    carry = mode == 'carry'
    model = with_config(model, history=mode, history_window=3)
    window = None if carry else 3
    episodes = [(INSTRUCTIONS[0], _observations(6, seed=1)), (INSTRUCTIONS[1], _observations(4, seed=2))]
    thresholds = _thresholds_that_mix_exits(model, window, carry, episodes)
    reference = UpstreamEvaluation(model, thresholds, window, reference=carry)
    policy = EarlyExitPolicy(model, ExitCriterion(thresholds, first_exit_checked=carry), count_cost_table(model))
    chosen = []
    for instruction, observations in episodes:
        reference.reset()
        policy.reset()
        for observation in observations:
            exit_index, pose, gripper = reference.step(observation, instruction)
            action, info = policy.step(observation, instruction)
            assert info.exit_index == exit_index
            np.testing.assert_allclose(action.pose, pose, **TOLERANCE)
            assert action.gripper == gripper
            chosen.append(exit_index)
    assert len(set(chosen)) >= 2, f'the thresholds should make the rule pick several exits, got {chosen}'
    if carry:
        assert 0 in chosen, 'upstream rule: the first exit can be chosen against the layer before it'


def test_tentative_calls_do_not_move_the_carried_state(model: DeerVLAFlamingo) -> None:
    """Stopping early or late on a step changes the next step only through the chosen exit's feature."""
    observations = _observations(3, seed=3)
    never = ExitCriterion.always_last(model.num_exits)
    costs = count_cost_table(model)
    policy = EarlyExitPolicy(model, never, costs)
    late = [policy.step(observation, INSTRUCTIONS[2])[0].pose for observation in observations]
    reference = UpstreamEvaluation(model, [-np.inf] * model.num_exits)
    for observation, pose in zip(observations, late):
        np.testing.assert_allclose(pose, reference.step(observation, INSTRUCTIONS[2])[1], **TOLERANCE)
    policy.reset()  # a new subtask starts from a zero state: the same steps give the same actions again
    again = [policy.step(observation, INSTRUCTIONS[2])[0].pose for observation in observations]
    np.testing.assert_allclose(np.array(again), np.array(late), **TOLERANCE)


def test_first_exit_rule_needs_a_model_that_gives_the_reference(model: DeerVLAFlamingo) -> None:
    plain = with_config(model, first_exit_reference=False)
    with pytest.raises(ValueError, match='first_exit_reference'):
        EarlyExitPolicy(plain, ExitCriterion(np.full(plain.num_exits, np.inf), first_exit_checked=True),
                        count_cost_table(plain))
    criterion = ExitCriterion(np.full(plain.num_exits, np.inf))  # deer_ros's rule: exit 0 is never chosen
    _, info = EarlyExitPolicy(plain, criterion, count_cost_table(plain)).step(_observations(1, 4)[0], INSTRUCTIONS[0])
    assert info.exit_index == 1 and np.isnan(info.consistency[0])


def test_capped_checkpoint_reads_only_its_layers_and_equals_the_full_model(model: DeerVLAFlamingo, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    encoder = FlamingoPromptEncoder(model.config.decoder)
    ids, mask = encoder([INSTRUCTIONS[3]])
    observation = _observations(1, seed=5)[0]
    static, gripper = (torch.from_numpy(image)[None] for image in (observation.rgb_static, observation.rgb_gripper))
    with torch.no_grad():
        full = model.exit_features(model.encode_vision(static, gripper), ids, mask)
    for cap in range(1, model.num_exits + 1):
        capped = DeerVLAFlamingo.from_pretrained(tmp_path, num_exits=cap)
        assert len(capped.lang_encoder.blocks) == model.exit_layers[cap - 1]
        with torch.no_grad():
            features = capped.exit_features(capped.encode_vision(static, gripper), ids, mask)
        torch.testing.assert_close(features, full[:, :cap], **TOLERANCE)
    DeerVLAFlamingo.from_pretrained(tmp_path, num_exits=1).save_pretrained(tmp_path / 'capped')  # its layers only
    assert len(DeerVLAFlamingo.from_pretrained(tmp_path / 'capped').lang_encoder.blocks) == model.exit_layers[0]
    with pytest.raises(CheckpointError, match='requested 4 exits'):
        DeerVLAFlamingo.from_pretrained(tmp_path, num_exits=4)
    with pytest.raises(CheckpointError, match='not found'):
        DeerVLAFlamingo.from_pretrained(tmp_path / 'missing')


def test_checkpoint_of_another_size_is_refused(model: DeerVLAFlamingo, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    wider = tiny_config(model.config.decoder.tokenizer_path, model.config.decoder.vocab_size - 3)
    wider.decoder.d_model = 64
    wider.save(tmp_path / 'config.json')
    with pytest.raises(CheckpointError, match='shape'):
        DeerVLAFlamingo.from_pretrained(tmp_path)


def test_masked_pooling_of_padded_prompts_equals_upstream_unpadded_pooling(model: DeerVLAFlamingo) -> None:
    """Upstream pools padding too, but evaluates one unpadded prompt; ``real_tokens`` pools padded batches that way."""
    single = FlamingoPromptEncoder(model.config.decoder)
    padded = FlamingoPromptEncoder(model.config.decoder)
    padded.padding = 'max_length'
    visual = torch.randn(1, 2 * model.config.perceiver.num_latents, model.config.vision.hidden_size)
    masked = with_config(model, exit_pooling='real_tokens')
    with torch.no_grad():
        upstream = model.exit_features(visual, *single([INSTRUCTIONS[1]]))
        ids, mask = padded([INSTRUCTIONS[1]])
        assert not mask.all()
        torch.testing.assert_close(masked.exit_features(visual, ids, mask), upstream, **TOLERANCE)
        assert not torch.allclose(model.exit_features(visual, ids, mask), upstream)


def _meta_cost_table(config):
    """Counted on the meta device, as cost_table_for does (nn.LSTM's fused CPU kernel is invisible to the counter)."""
    with torch.device('meta'):
        return count_cost_table(DeerVLAFlamingo(config))


def test_cost_table_counts_the_reference_pass_instead_of_a_replay(model: DeerVLAFlamingo) -> None:
    carried = _meta_cost_table(model.config)
    assert carried.history_gflops == pytest.approx(carried.head_gflops)  # upstream's first-exit reference pass
    replays = [_meta_cost_table(with_config(model, history='replay', history_window=window,
                                            first_exit_reference=False).config).history_gflops for window in (4, 7)]
    assert replays[0] > 0 and replays[1] == pytest.approx(2 * replays[0])  # 3, then 6 remembered features
    steps = np.diff((0.0,) + carried.llm_gflops)
    assert np.allclose(steps, steps[0]) and all(np.diff(carried.param_bytes) > 0)
