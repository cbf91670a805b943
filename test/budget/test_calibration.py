"""Calibration file: round trip, provenance checks, clear errors on bad files."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from deer_ros.budget.calibration import CalibrationData, CalibrationFileError, calibration_path, file_sha256

LAYERS = (2, 4, 6, 8)


@pytest.fixture
def data(make_values) -> CalibrationData:
    return CalibrationData(make_values('converging', 64, 4), 'rms', LAYERS,
                           {'checkpoint_sha256': 'abc', 'window_size': 12})


def test_round_trip(tmp_path, data):
    loaded = CalibrationData.load(data.save(tmp_path / 'c.calibration.npz'), checkpoint_sha256='abc',
                                  exit_layers=LAYERS)
    np.testing.assert_array_equal(loaded.values, data.values)
    assert (loaded.metric, loaded.exit_layers, loaded.metadata) == ('rms', LAYERS, data.metadata)
    assert not list(tmp_path.glob('*.tmp'))


def test_path_is_beside_the_checkpoint_and_hash_reads_the_file(tmp_path):
    checkpoint = tmp_path / 'deer_d.pt'
    checkpoint.write_bytes(b'weights')
    assert calibration_path(checkpoint) == tmp_path / 'deer_d.calibration.npz'
    assert file_sha256(checkpoint, chunk_bytes=3) == hashlib.sha256(b'weights').hexdigest()


def test_wrong_checkpoint_rejected(tmp_path, data):
    path = data.save(tmp_path / 'c.npz')
    with pytest.raises(CalibrationFileError, match='re-run calibration'):
        CalibrationData.load(path, checkpoint_sha256='other')


def test_wrong_exit_layout_rejected(tmp_path, data):
    path = data.save(tmp_path / 'c.npz')
    with pytest.raises(CalibrationFileError, match=r'layers \[2, 4, 6, 8\]'):
        CalibrationData.load(path, exit_layers=(2, 4, 6))


def test_missing_file(tmp_path):
    with pytest.raises(CalibrationFileError, match='does not exist'):
        CalibrationData.load(tmp_path / 'none.npz')


def test_not_an_npz(tmp_path):
    path = tmp_path / 'c.npz'
    path.write_bytes(b'not a zip at all')
    with pytest.raises(CalibrationFileError, match='not a readable calibration file'):
        CalibrationData.load(path)


def test_missing_arrays(tmp_path):
    path = tmp_path / 'c.npz'
    np.savez(path, values=np.zeros((2, 2)))
    with pytest.raises(CalibrationFileError, match=r"missing arrays \['meta'\]"):
        CalibrationData.load(path)


def test_wrong_format_version(tmp_path):
    path = tmp_path / 'c.npz'
    np.savez(path, values=np.zeros((2, 2)), meta=np.array(json.dumps({'format_version': 99})))
    with pytest.raises(CalibrationFileError, match='format_version 1'):
        CalibrationData.load(path)


@pytest.mark.parametrize('column, value, message', [(0, 0.1, 'column 0 must be NaN'),
                                                    (2, np.inf, 'non-finite consistency value at sample 1, exit 2'),
                                                    (1, -0.5, '>= 0')])
def test_malformed_values_in_file(tmp_path, column, value, message):
    values = np.full((3, 3), 0.1)
    values[:, 0] = np.nan
    values[1, column] = value
    path = tmp_path / 'c.npz'
    np.savez(path, values=values,
             meta=np.array(json.dumps({'format_version': 1, 'metric': 'rms', 'exit_layers': [1, 2, 3]})))
    with pytest.raises(CalibrationFileError, match=message):
        CalibrationData.load(path)


@pytest.mark.parametrize('values, layers, metric, message', [
    (np.zeros((0, 3)), (1, 2, 3), 'rms', 'non-empty'),
    (np.full((2, 3), np.nan), (1, 2), 'rms', '2 exit_layers for 3'),
    (np.full((2, 2), np.nan), (2, 1), 'rms', 'strictly increasing'),
    (np.full((2, 2), np.nan), (1, 2), 'l3', 'unknown exit metric'),
])
def test_malformed_data_rejected(values, layers, metric, message):
    with pytest.raises(ValueError, match=message):
        CalibrationData(values, metric, layers)


def test_a_model_with_the_first_exit_reference_fills_column_0(tmp_path, data, make_decided_values):
    assert not data.first_exit_checked
    decided = CalibrationData(make_decided_values(64, 4), 'rms', LAYERS)
    assert decided.first_exit_checked
    loaded = CalibrationData.load(decided.save(tmp_path / 'c.npz'))
    assert loaded.first_exit_checked and np.array_equal(loaded.values, decided.values)
    partly = decided.values.copy()
    partly[5, 0] = np.nan  # column 0 is NaN throughout or finite throughout
    with pytest.raises(ValueError, match='column 0 must be NaN, or finite everywhere'):
        CalibrationData(partly, 'rms', LAYERS)
