"""Counted compute and memory cost of one policy step, per exit.

The numbers come from :mod:`deer_ros.model.flops` (``torch.utils.flop_counter``
on the real modules) and from parameter sizes; nothing here is estimated.
Exits are 0-based in Python (exit 0 is the first exit); ROS messages are 1-based.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class CostTable:
    """Cost of stopping at each exit, for one control step (batch 1).

    Attributes:
        exit_layers: decoder layers that have run when stopping at exit k.
        llm_gflops: cumulative decoder (LLM) GFLOPs when stopping at exit k,
            i.e. the text input (token embedding, or the projection of cached
            sentence-encoder states) + layers ``0 .. exit_layers[k]-1``.
        vision_gflops: vision encoders + resamplers of both cameras (+ the
            proprioception projection), paid once per step whatever the exit.
        head_gflops: one action-head pass (LayerNorm, LSTM step, MLPs). The
            head runs once at every exit that is checked.
        history_gflops: the per-step replay of the remembered history through
            the head's LayerNorm + LSTM (``history_window - 1`` steps), paid
            once per step whatever the exit.
        param_bytes: bytes of parameters resident when the model is capped at
            exit k (vision, embeddings, layers up to exit k, action head).
    """

    exit_layers: tuple[int, ...]
    llm_gflops: tuple[float, ...]
    vision_gflops: float
    head_gflops: float
    history_gflops: float
    param_bytes: tuple[int, ...]

    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)

    def total_gflops(self, exit_index: int) -> float:
        """Total GFLOPs of a step that stops at ``exit_index`` (history replay and heads of all checked exits included)."""
        return (self.llm_gflops[exit_index] + self.vision_gflops + self.history_gflops
                + (exit_index + 1) * self.head_gflops)

    def truncated(self, num_exits: int) -> 'CostTable':
        """The table of the same model capped to its first ``num_exits`` exits."""
        if not 1 <= num_exits <= self.num_exits:
            raise ValueError(f'num_exits must be in [1, {self.num_exits}], got {num_exits}')
        return CostTable(self.exit_layers[:num_exits], self.llm_gflops[:num_exits],
                         self.vision_gflops, self.head_gflops, self.history_gflops, self.param_bytes[:num_exits])

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_json(cls, path: str | Path) -> 'CostTable':
        data = json.loads(Path(path).read_text())
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})
