"""Per-exit cost of a model as ``deer-ros cost`` reports it: compute per control step and resident memory per cap.

Everything is counted on the meta device (nothing is allocated, so the
paper-sized models report in seconds): compute with
:func:`~deer_ros.model.flops.count_cost_table` (FLOPs, two per
multiply-add; the caller converts to the paper's MACs), memory as the bytes
of the parameters a model capped at that exit holds.

The decoder's cost grows with the number of text tokens it reads, so the
prompt length is part of the report. The default is the most a prompt can
cost (``decoder.max_length`` tokens, 32 for DeeR-VLA: what budgets are
solved with); the DeeR paper's per-layer figure corresponds to a 13-token
CALVIN prompt (docs/model.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .configuration_deer_vla import DeerVLAConfig
from .family import AnyConfig, model_class_for
from .flops import count_cost_table, llm_modules, parameter_bytes


@dataclass(frozen=True)
class CostRow:
    """Stopping at one exit (0-based ``exit_index``): cumulative costs of a step, parameters resident at that cap."""

    exit_index: int
    layers: int
    llm_gflops: float
    vision_gflops: float
    head_gflops: float
    total_gflops: float
    llm_bytes: int
    resident_bytes: int


@dataclass(frozen=True)
class CostReport:
    """The rows of one config at one prompt length.

    ``head_gflops`` of a row: the head passes of every exit checked up to it
    plus the per-step history work (window replay, or DeeR-VLA's reference
    pass for the first exit). ``llm_bytes``: token embeddings, decoder
    blocks and their cross-attention; ``resident_bytes`` adds vision,
    resampler and head.
    """

    name: str
    text_tokens: int
    rows: tuple[CostRow, ...]

    @property
    def llm_gflops_per_layer(self) -> float:
        """Decoder cost per layer, averaged over the kept layers (with cross-attention every n-th layer, as in
        deer-vla-9b, layers differ)."""
        return self.rows[-1].llm_gflops / self.rows[-1].layers


def default_text_tokens(config: AnyConfig) -> int:
    """The most text tokens the model's decoder reads (what its budgets are solved with)."""
    return config.decoder.max_length if isinstance(config, DeerVLAConfig) else config.decoder.text_length


def cost_report(config: AnyConfig, text_tokens: int | None = None) -> CostReport:
    """Count ``config``'s per-exit costs with ``text_tokens`` prompt tokens (default: :func:`default_text_tokens`)."""
    tokens = text_tokens or default_text_tokens(config)
    with torch.device('meta'):
        model = model_class_for(config)(config)
    table = count_cost_table(model, tokens)
    rows = tuple(
        CostRow(exit_index=k, layers=layers, llm_gflops=table.llm_gflops[k], vision_gflops=table.vision_gflops,
                head_gflops=table.history_gflops + (k + 1) * table.head_gflops, total_gflops=table.total_gflops(k),
                llm_bytes=parameter_bytes(llm_modules(model, layers)), resident_bytes=table.param_bytes[k])
        for k, layers in enumerate(table.exit_layers))
    return CostReport(config.name, tokens, rows)
