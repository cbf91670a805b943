"""Count the cost table of a model with ``torch.utils.flop_counter``.

Each part of one control step (batch 1) runs once under ``FlopCounterMode``:
both cameras' vision encoders + resamplers, the decoder group by group up to
every exit, one action-head step and the per-step head work paid whatever the
exit: the replay of the remembered step history through the LSTM (window
mode; none for DeeR-VLA's carried state) and, for a model with
``first_exit_reference`` (either family), the head pass on the reference the
first exit is compared with. Counting works on the meta device too,
so the paper-sized config is counted without allocating its weights.
Results are cached in memory and on disk, keyed by the config fingerprint
and a hash of the modeling and counting code, so a code change that moves
the numbers never serves a stale table.

``FlopCounterMode`` does not know the CPU flash-attention kernel that
``scaled_dot_product_attention`` dispatches to on CPU, so its formula is
registered here (the same count torch uses for the CUDA kernels).
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from deer_ros.calvin_layout import ROBOT_OBS_DIM

from .configuration_deer import DeerConfig
from .cost import CostTable
from .family import AnyConfig, AnyModel, config_from_dict, model_class_for
from .modeling_deer_vla import DeerVLAFlamingo
from .pretrained_weights import cache_dir
from .tokenization import MINILM_HIDDEN_SIZE, InstructionEncoder, load_sentence_encoder

_aten = torch.ops.aten


@register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _counted_gflops(function, *args) -> float:
    with FlopCounterMode(display=False) as counter:
        function(*args)
    return counter.get_total_flops() / 1e9


def parameter_bytes(modules: list[torch.nn.Module]) -> int:
    return sum(p.numel() * p.element_size() for module in modules for p in module.parameters())


def _probe_text(model: AnyModel, device: torch.device, text_length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Text input of ``text_length`` tokens (default: the longest instruction the model reads), and its mask."""
    if isinstance(model, DeerVLAFlamingo):  # padding 'longest': a prompt costs at most max_length tokens
        length = text_length or model.config.decoder.max_length
        return (torch.zeros(1, length, dtype=torch.long, device=device),
                torch.ones(1, length, dtype=torch.long, device=device))
    length = text_length or model.config.decoder.text_length
    if model.text_proj is None:
        text_input = torch.zeros(1, length, dtype=torch.long, device=device)
    else:  # the sentence encoder's states are cached per instruction: only their projection runs every step
        text_input = torch.zeros(1, length, MINILM_HIDDEN_SIZE, device=device)
    return text_input, torch.ones(1, length, dtype=torch.long, device=device)


def llm_modules(model: AnyModel, layers: int) -> list[torch.nn.Module]:
    """The decoder's modules resident at a cap of ``layers`` layers: text input, blocks, their cross-attention."""
    if isinstance(model, DeerVLAFlamingo):
        decoder = model.lang_encoder
        return [decoder.wte, *decoder.blocks[:layers],
                *(block for block in decoder.gated_cross_attn_layers[:layers] if block is not None)]
    every = model.config.decoder.cross_attention_every
    text = [module for module in (model.embed_tokens, model.text_proj) if module is not None]
    return text + list(model.layers[:layers]) + list(model.cross_attention[:len(range(0, layers, every))])


def _resident_modules(model: AnyModel, layers: int) -> list[torch.nn.Module]:
    if isinstance(model, DeerVLAFlamingo):
        return model.resident_modules(layers)
    optional = (model.proprio_proj, model.proprio_to_exit)
    shared = [*model.vision_modules(), model.resamplers, model.action_head] + [m for m in optional if m is not None]
    return shared + llm_modules(model, layers)


def count_cost_table(model: AnyModel, text_length: int | None = None) -> CostTable:
    """Count per-exit LLM GFLOPs, vision and head GFLOPs, and resident parameter bytes per cap.

    ``text_length``: text tokens the decoder reads; by default the most it
    can read (``decoder.max_length`` / ``text_length``), so budgets solved
    on the table hold for any instruction. ``deer-ros cost --prompt-tokens``
    counts a given instruction length (the paper's figures assume a 13-token
    CALVIN prompt: docs/model.md). Runs with autograd enabled: ``FlopCounterMode``'s module tracker fails on
    parameters used directly as activations under ``no_grad``.
    """
    device = next(model.parameters()).device
    static = torch.zeros(1, 200, 200, 3, dtype=torch.uint8, device=device)
    gripper = torch.zeros(1, 84, 84, 3, dtype=torch.uint8, device=device)
    proprio = torch.zeros(1, ROBOT_OBS_DIM, device=device) if model.config.use_proprio else None
    text_input, mask = _probe_text(model, device, text_length)

    vision_gflops = _counted_gflops(model.encode_vision, static, gripper, proprio)
    visual = model.encode_vision(static, gripper, proprio)
    llm_gflops = []
    with FlopCounterMode(display=False) as counter:
        for _ in model.iter_exit_features(visual, text_input, mask):
            llm_gflops.append(counter.get_total_flops() / 1e9)
    feature = torch.zeros(1, 1, llm_feature_dim(model.config), device=device)
    head_gflops = _counted_gflops(model.action_head, feature)
    remembered = 0 if getattr(model, 'carries_state', False) else model.config.head.history_window - 1
    history_gflops = _counted_gflops(model.action_head.history_state, feature.expand(-1, remembered, -1)) \
        if remembered else 0.0
    if model.config.first_exit_reference:  # the reference's action, read before exit 0 every step
        history_gflops += head_gflops
    param_bytes = tuple(parameter_bytes(_resident_modules(model, layers)) for layers in model.exit_layers)
    return CostTable(model.exit_layers, tuple(llm_gflops), vision_gflops, head_gflops, history_gflops, param_bytes)


def llm_feature_dim(config: AnyConfig) -> int:
    """Width of the exit features (the decoder's hidden size)."""
    return config.decoder.hidden_size if isinstance(config, DeerConfig) else config.decoder.d_model


def instruction_gflops(config: AnyConfig, instruction: str = 'pick the red block up from the table') -> float:
    """One-off GFLOPs of encoding an instruction (0 without a sentence encoder: token lookup is free).

    Paid when the instruction changes, not per control step, so it is not in
    the :class:`CostTable`; reported beside it in docs/model.md.
    """
    if not isinstance(config, DeerConfig) or config.decoder.tokenizer != 'minilm':
        return 0.0
    encoded = InstructionEncoder(config.decoder).tokenizer([instruction], padding='max_length', truncation=True,
                                                           max_length=config.decoder.text_length, return_tensors='pt')
    return _counted_gflops(lambda: load_sentence_encoder()(**encoded))


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    sources = [Path(__file__), Path(__file__).with_name('cost.py'),
               *(Path(__file__).with_name(name) for name in ('modeling_deer.py', 'modeling_deer_vla.py',
                                                             'efficientnet_lite.py'))]
    return hashlib.sha256(b''.join(path.read_bytes() for path in sources)).hexdigest()[:12]


@functools.lru_cache(maxsize=16)
def _cached_cost_table(fingerprint: str, config_json: str, text_length: int | None) -> CostTable:
    tokens = '' if text_length is None else f'-t{text_length}'
    path = cache_dir() / 'costs' / f'{fingerprint}{tokens}-{_code_fingerprint()}.json'
    if path.is_file():
        return CostTable.from_json(path)
    config = config_from_dict(json.loads(config_json))
    with torch.device('meta'):
        model = model_class_for(config)(config)
    table = count_cost_table(model, text_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_json(path)
    return table


def cost_table_for(config: AnyConfig, text_length: int | None = None) -> CostTable:
    """The cost table of ``config`` for ``text_length`` text tokens (default: the most the model reads), counted
    once on the meta device, then cached."""
    return _cached_cost_table(config.fingerprint(), json.dumps(config.to_dict(), sort_keys=True), text_length)
