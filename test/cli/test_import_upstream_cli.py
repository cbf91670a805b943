"""deer-ros import-upstream as a command: its options, exit codes and messages (the import itself:
test/model/test_upstream_import.py, which also runs the command end to end)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deer_ros.cli import build_parser, main


def _arguments(tmp_path: Path, checkpoint: Path, *extra: str) -> list[str]:
    mpt = tmp_path / 'mpt'
    mpt.mkdir(exist_ok=True)
    return ['import-upstream', '--checkpoint', str(checkpoint), '--mpt', str(mpt), '--clip',
            str(tmp_path / 'clip.bin'), '--output', str(tmp_path / 'out'), *extra]


def test_listed_with_its_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(['--help'])
    assert 'import-upstream' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(['import-upstream', '--help'])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    for option in ('--checkpoint', '--mpt', '--clip', '--openflamingo', '--output', '--config', '--threshold-type',
                   '--exit-ratio'):
        assert option in printed


def test_missing_required_inputs_are_usage_errors(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(['import-upstream', '--checkpoint', 'x.pth'])
    assert exited.value.code == 2 and '--mpt' in capsys.readouterr().err


@pytest.mark.parametrize('case, message', [
    ('missing', 'no such file; pass a DeeR-VLA checkpoint .pth'),
    ('truncated', 'truncated or not a PyTorch checkpoint'),
    ('occupied', 'not an empty directory: pass a new directory'),
    ('config', "no shipped model config named 'deer-vla-5b'"),
])
def test_wrong_inputs_exit_2_with_what_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture, case: str,
                                               message: str) -> None:
    checkpoint = tmp_path / 'DeeR.pth'
    torch.save({'model_state_dict': {'module.extra_exit.x': torch.zeros(64)}}, checkpoint)
    extra: list[str] = []
    if case == 'missing':
        checkpoint = tmp_path / 'missing.pth'
    elif case == 'truncated':
        checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    elif case == 'occupied':
        (tmp_path / 'out').mkdir()
        (tmp_path / 'out' / 'model.safetensors').write_bytes(b'x')
    else:
        extra = ['--config', 'deer-vla-5b']
    assert main(_arguments(tmp_path, checkpoint, *extra)) == 2
    error = capsys.readouterr().err
    assert error.startswith('deer-ros import-upstream: ') and message in error
