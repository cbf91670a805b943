"""``dataset_roots``: the roots of a one-process collection and of a sharded one (``collect --workers N``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from deer_ros.benchmark.dataset import CalvinDatasetWriter, dataset_roots, shard_dir


def test_a_root_with_training_is_the_only_root(tmp_path: Path) -> None:
    CalvinDatasetWriter(tmp_path).close()
    assert dataset_roots(tmp_path) == [tmp_path]
    assert dataset_roots(str(tmp_path)) == [tmp_path]


def test_shards_come_in_worker_order(tmp_path: Path) -> None:
    for index in (10, 2, 0):
        CalvinDatasetWriter(shard_dir(tmp_path, index)).close()
    (tmp_path / 'shard_notes').mkdir()
    (tmp_path / 'shard_07.txt').touch()
    assert [root.name for root in dataset_roots(tmp_path)] == ['shard_00', 'shard_02', 'shard_10']


def test_an_unfinished_shard_is_named_not_skipped(tmp_path: Path) -> None:
    CalvinDatasetWriter(shard_dir(tmp_path, 0)).close()
    CalvinDatasetWriter(shard_dir(tmp_path, 1))  # never closed: frames may exist, the index does not
    with pytest.raises(FileNotFoundError, match='shard_01: no index files'):
        dataset_roots(tmp_path)


def test_a_folder_without_a_collection_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match='neither training/ nor shard_'):
        dataset_roots(tmp_path)
