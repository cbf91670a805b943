"""``decoder.tokenizer: minilm``: frozen sentence-encoder states projected into the decoder."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from deer_ros.benchmark.language import TASK_LANGUAGE
from deer_ros.model import DeerVLA, load_config
from deer_ros.model.builder import with_sentence_encoder
from deer_ros.model.configuration_deer import ConfigError, DecoderConfig, DeerConfig
from deer_ros.model.flops import count_cost_table, instruction_gflops
from deer_ros.model.tokenization import MINILM_HIDDEN_SIZE, InstructionEncoder


@pytest.fixture(scope='module')
def encoder() -> InstructionEncoder:
    return InstructionEncoder(DecoderConfig(tokenizer='minilm', text_length=16))


def _sentence(encoder: InstructionEncoder, texts: list[str]) -> torch.Tensor:
    states, mask = encoder(texts)
    weights = mask[..., None].float()
    return F.normalize((states * weights).sum(1) / weights.sum(1), dim=-1)


def test_the_sentence_encoder_recognises_tasks_in_the_unseen_evaluation_wording(encoder) -> None:
    """Why the shipped policy reads instructions through MiniLM: evaluation phrases are never in the demos.

    Nearest training-paraphrase centroid; the from-scratch byte decoder of the
    earlier policy managed 21 % here (docs/training.md, section 4).
    """
    names = list(TASK_LANGUAGE)
    centroids = F.normalize(torch.stack([_sentence(encoder, list(TASK_LANGUAGE[n].training)).mean(0) for n in names]),
                            dim=-1)
    queries = _sentence(encoder, [TASK_LANGUAGE[n].evaluation for n in names])
    accuracy = (queries @ centroids.T).argmax(1).eq(torch.arange(len(names))).float().mean().item()
    assert accuracy >= 0.9


def test_instruction_states_are_frozen_padded_and_cached(encoder) -> None:
    states, mask = encoder(['open the drawer', 'pull the drawer open'])
    assert states.shape == (2, 16, MINILM_HIDDEN_SIZE) and mask.shape == (2, 16) and not states.requires_grad
    assert mask[0].sum() == 5 and mask[1].sum() == 6  # [CLS] words [SEP], then padding
    again, _ = encoder(['pull the drawer open'])
    torch.testing.assert_close(again[0], states[1])
    with pytest.raises(ValueError, match='non-empty'):
        encoder([' '])


def test_switching_to_the_sentence_encoder_keeps_every_other_weight_and_cuts_the_llm_cost() -> None:
    torch.manual_seed(0)
    model = DeerVLA(dataclasses.replace(load_config('tiny'), use_proprio=True))
    switched = with_sentence_encoder(model)
    assert switched.config.decoder.tokenizer == 'minilm' and switched.config.decoder.text_length == 16
    assert switched.embed_tokens is None and switched.text_proj is not None
    kept = switched.state_dict()
    for name, tensor in model.state_dict().items():
        if not name.startswith('embed_tokens.'):
            torch.testing.assert_close(kept[name], tensor)
    assert with_sentence_encoder(switched) is switched

    states, mask = InstructionEncoder(switched.config.decoder)(['open the drawer'])
    visual = torch.randn(1, 2 * switched.config.resampler.num_latents + 1, switched.config.resampler.hidden_size)
    features = switched.exit_features(visual, states, mask)
    assert features.shape == (1, switched.num_exits, switched.config.decoder.hidden_size) and features.isfinite().all()
    # 16 text tokens instead of 48 bytes at every layer; the encoder itself runs once per instruction.
    before, after = count_cost_table(model), count_cost_table(switched)
    assert all(new < 0.5 * old for new, old in zip(after.llm_gflops, before.llm_gflops))
    assert instruction_gflops(switched.config) > 0 and instruction_gflops(model.config) == 0


def test_the_sentence_encoder_needs_a_decoder_trained_with_it() -> None:
    data = load_config('smollm2').to_dict()
    data['decoder']['tokenizer'] = 'minilm'
    with pytest.raises(ConfigError, match='minilm'):
        DeerConfig.from_dict(data)
