"""Small CALVIN-format datasets for the training tests (a plain module, importable by name)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from deer_ros.benchmark.dataset import FRAME_SHAPES, Annotation, CalvinDatasetWriter

INSTRUCTIONS = (('open the drawer', 'open_drawer'), ('push the blue block left', 'push_blue_block_left'))


def demo_frames(length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One recording whose actions are visible in the images, so a model can learn them.

    The static image's colour encodes the first three pose deltas and the
    gripper image's brightness the gripper; states are float64 like CALVIN's.
    """
    phase = rng.uniform(0, 2 * np.pi)
    steps = np.arange(length)
    pose = np.stack([np.sin(0.3 * steps + phase + k) for k in range(6)], axis=1) * 0.8
    gripper = np.where(steps < length // 2, 1.0, -1.0)
    frames = {key: rng.normal(size=(length, *shape)) for key, shape in FRAME_SHAPES.items()}
    frames['rel_actions'] = np.concatenate([pose, gripper[:, None]], axis=1)
    colour = ((pose[:, :3] + 1) * 127.5).astype(np.uint8)
    frames['rgb_static'] = np.broadcast_to(colour[:, None, None, :], (length, 200, 200, 3)).copy()
    frames['rgb_gripper'] = np.broadcast_to(((gripper + 1) * 100 + 20).astype(np.uint8)[:, None, None, None],
                                            (length, 84, 84, 3)).copy()
    noise = rng.integers(0, 8, size=frames['rgb_static'].shape, dtype=np.uint8)
    frames['rgb_static'] += noise
    return frames


def write_demo_dataset(root: Path, train_episodes: int = 3, val_episodes: int = 1, length: int = 12,
                       seed: int = 0) -> Path:
    """Episodes through the dataset writer (uncompressed: faster to read in tests)."""
    rng = np.random.default_rng(seed)
    with CalvinDatasetWriter(root, compress=False) as writer:
        for episode in range(train_episodes + val_episodes):
            split = 'training' if episode < train_episodes else 'validation'
            instruction, task = INSTRUCTIONS[episode % len(INSTRUCTIONS)]
            writer.add_episode(split, demo_frames(length, rng), [Annotation(0, length - 1, instruction, task)])
    return root


def write_calvin_like_split(split_dir: Path, first: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Frames as real CALVIN stores them: extra depth/tactile keys, float64 states, real embeddings."""
    (split_dir / 'lang_annotations').mkdir(parents=True)
    rel_actions = np.concatenate([rng.uniform(-1.2, 1.2, (length, 6)), rng.choice([-1.0, 1.0], (length, 1))], axis=1)
    for offset in range(length):
        np.savez(split_dir / f'episode_{first + offset:07d}.npz',
                 actions=rng.normal(size=7), rel_actions=rel_actions[offset], robot_obs=rng.normal(size=15),
                 scene_obs=rng.normal(size=24),
                 rgb_static=rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                 rgb_gripper=rng.integers(0, 256, (84, 84, 3), dtype=np.uint8),
                 rgb_tactile=np.zeros((160, 120, 6), np.uint8), depth_static=np.zeros((200, 200), np.float32),
                 depth_gripper=np.zeros((84, 84), np.float32), depth_tactile=np.zeros((160, 120, 2), np.float32))
    np.save(split_dir / 'ep_start_end_ids.npy', np.array([[first, first + length - 1]]))
    np.save(split_dir / 'lang_annotations' / 'auto_lang_ann.npy', {
        'language': {'ann': ['lift the red block'], 'task': ['lift_red_block_table'],
                     'emb': rng.normal(size=(1, 1, 384)).astype(np.float32)},
        'info': {'indx': [(np.int64(first), np.int64(first + length - 1))], 'episodes': []}}, allow_pickle=True)
    return rel_actions
