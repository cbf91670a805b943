"""The results file: a header of settings, one line per chain, on disk as each chain ends."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from deer_ros.benchmark.results_file import FORMAT, ResultsFile, SettingsMismatch

SETTINGS = {'policy': 'expert', 'policy_kwargs': {'sizes': (1, 2)}, 'max_steps': 5, 'protocol': 'p/1'}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_started_file_holds_the_header_then_one_line_per_appended_chain(tmp_path: Path) -> None:
    path = tmp_path / 'runs' / 'eval.chains.jsonl'
    results = ResultsFile.open(path, SETTINGS)
    assert results.records == {}
    results.append({'index': 2, 'successes': 1})
    results.append({'index': 0, 'successes': 3})
    header, *chains = _lines(path)
    assert header == {'format': FORMAT, 'version': 1,
                      'settings': {**SETTINGS, 'policy_kwargs': {'sizes': [1, 2]}}}
    assert chains == [{'index': 2, 'successes': 1}, {'index': 0, 'successes': 3}]
    assert results.records == {2: chains[0], 0: chains[1]}
    with pytest.raises(ValueError, match='integer index'):
        results.append({'successes': 1})


def test_resuming_returns_the_recorded_chains_the_last_line_of_an_index_winning(tmp_path: Path) -> None:
    path = tmp_path / 'eval.jsonl'
    results = ResultsFile.open(path, SETTINGS)
    for record in ({'index': 1, 'error': 'RuntimeError: x'}, {'index': 0}, {'index': 1, 'error': None}):
        results.append(record)
    resumed = ResultsFile.open(path, SETTINGS, resume=True)
    assert resumed.records == {0: {'index': 0}, 1: {'index': 1, 'error': None}}
    resumed.append({'index': 2})
    assert len(_lines(path)) == 5


def test_an_existing_run_is_not_overwritten_and_resuming_a_missing_file_starts_it(tmp_path: Path) -> None:
    path = tmp_path / 'eval.jsonl'
    ResultsFile.open(path, SETTINGS, resume=True).append({'index': 0})
    with pytest.raises(FileExistsError, match='already holds an evaluation'):
        ResultsFile.open(path, SETTINGS)
    assert len(_lines(path)) == 2


def test_resuming_with_other_settings_is_refused_naming_each_difference(tmp_path: Path) -> None:
    path = tmp_path / 'eval.jsonl'
    ResultsFile.open(path, SETTINGS)
    with pytest.raises(SettingsMismatch, match=r"max_steps=5 there, 7 now; scene=None there, 'D' now"):
        ResultsFile.open(path, {**SETTINGS, 'max_steps': 7, 'scene': 'D'}, resume=True)
    results = ResultsFile.open(path, SETTINGS, resume=True)
    results.require({'max_steps': 5, 'protocol': 'p/1'})
    with pytest.raises(SettingsMismatch, match='protocol'):
        results.require({'protocol': 'p/2'})


def test_a_line_cut_short_by_a_kill_is_dropped_with_a_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / 'eval.jsonl'
    results = ResultsFile.open(path, SETTINGS)
    results.append({'index': 0})
    with path.open('a') as stream:
        stream.write('{"index": 1, "succ')
    with caplog.at_level(logging.WARNING):
        resumed = ResultsFile.open(path, SETTINGS, resume=True)
    assert 'cut short' in caplog.text
    assert resumed.records == {0: {'index': 0}}
    resumed.append({'index': 1})
    assert [line.get('index') for line in _lines(path)] == [None, 0, 1]


def test_a_cut_header_starts_the_file_again_and_a_damaged_line_is_refused(tmp_path: Path, caplog) -> None:
    cut = tmp_path / 'cut.jsonl'
    cut.write_text('{"format": "deer_ros.chain_res')
    with caplog.at_level(logging.WARNING):
        assert ResultsFile.open(cut, SETTINGS, resume=True).records == {}
    assert 'header was cut short' in caplog.text and _lines(cut)[0]['settings']['max_steps'] == 5
    damaged = tmp_path / 'damaged.jsonl'
    ResultsFile.open(damaged, SETTINGS)
    with damaged.open('a') as stream:
        stream.write('not json\n{"index": 0}\n')
    with pytest.raises(ValueError, match=r'damaged.jsonl:2 is not a JSON line'):
        ResultsFile.open(damaged, SETTINGS, resume=True)
    other = tmp_path / 'other.json'
    other.write_text('{"num_chains": 3}\n')
    with pytest.raises(ValueError, match='is not a deer_ros.chain_results version 1 file'):
        ResultsFile.open(other, SETTINGS, resume=True)
