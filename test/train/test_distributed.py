"""Two CPU processes (gloo) train with DistributedDataParallel and stay in sync.

Forked rather than spawned: a spawned child re-imports torch and transformers
(~10 s each on 2 cores); the test sets one intra-op thread before forking.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from deer_ros.train.config import TrainConfig

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, config: TrainConfig) -> None:
    """One rank: the env torchrun would set, then the real trainer; dumps its final weights."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from deer_ros.train.distributed import init_distributed, shutdown_distributed
    from deer_ros.train.trainer import Trainer
    context, device = init_distributed('cpu')
    trainer = Trainer(config, context, device, resume=False)
    trainer.run()
    torch.save({'state': trainer.objective.state_dict(), 'rank': context.rank},
               Path(config.output) / f'rank{rank}.pt')
    shutdown_distributed(context)


def test_two_gloo_processes_keep_identical_parameters(demo_data, small_config_file, tmp_path):
    config = TrainConfig(data=str(demo_data), output=str(tmp_path), model=str(small_config_file), window=4, stride=2,
                         batch_size=2, joint_steps=3, head_steps=2, lr=1e-3, warmup_steps=0, num_workers=0,
                         save_every=100, val_windows=2, calibration_windows=2, progress=False)
    mp.start_processes(_worker, args=(_free_port(), config), nprocs=WORLD,
                       start_method='fork')
    states = [torch.load(tmp_path / f'rank{rank}.pt', weights_only=True) for rank in range(WORLD)]
    assert [s['rank'] for s in states] == [0, 1]
    first, second = states[0]['state'], states[1]['state']
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)
    assert float(first['model.cross_attention.0.attention_gate'].abs()) > 0  # the gates start at 0: it trained
