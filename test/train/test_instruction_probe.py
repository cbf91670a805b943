"""benchmarks/instruction_probe.py: the evaluation phrase replaces the demo wording per task, nothing else changes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from benchmark_scripts import load_benchmark
from small_models import small_config
from train_fixtures import demo_frames

from deer_ros.benchmark.dataset import Annotation, CalvinDatasetWriter
from deer_ros.benchmark.language import TASK_LANGUAGE
from deer_ros.model import build_model


def test_probe_scores_each_task_with_its_evaluation_phrase(tmp_path: Path) -> None:
    """A demo recorded with the evaluation phrase itself scores ratio 1; one with another wording does not."""
    rng = np.random.default_rng(0)
    with CalvinDatasetWriter(tmp_path, compress=False) as writer:
        writer.add_episode('validation', demo_frames(10, rng),
                           [Annotation(0, 9, TASK_LANGUAGE['open_drawer'].evaluation, 'open_drawer')])
        writer.add_episode('validation', demo_frames(10, rng),
                           [Annotation(0, 9, 'push the blue block leftwards', 'push_blue_block_left')])
    config = small_config()
    config.head.history_window = 4
    probe = load_benchmark('instruction_probe')
    rows = probe.probe(build_model(config), str(tmp_path), 'validation', stride=2)

    assert set(rows) == {'open_drawer', 'push_blue_block_left'}
    assert rows['open_drawer']['windows'] == 4 and rows['push_blue_block_left']['windows'] == 4  # starts 0, 2, 4, 6
    assert rows['open_drawer']['demo'] == rows['open_drawer']['evaluation'] > 0
    assert rows['push_blue_block_left']['ratio'] != 1.0
    assert 'push_blue_block_left' in probe.format_table(rows)
