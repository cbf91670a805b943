#!/usr/bin/env bash
# Reproduce the shipped default policy (deer_ros/pretrained/tiny) end to end on the embedded simulator:
#   1. collect scripted-expert demonstrations in CALVIN format      (deer-ros collect)
#   2. train the tiny multi-exit model from images only, joint + heads stages  (deer-ros train)
#   3. add proprioception (robot-state token + skip to every exit) and train on with the task probe
#      (deer-ros train --add-proprio --task-weight 0.1)
#   4. switch the instructions to the frozen MiniLM sentence encoder and train on
#      (deer-ros train --sentence-encoder --task-weight 0.5)
#   5. move the exits to every decoder layer (12 instead of 6) and retrain the shared head on them, backbone
#      frozen (deer-ros train --exit-interval 1 --joint-steps 0), writing the calibration file beside the weights
#   6. evaluate it on 5-instruction chains                          (deer-ros evaluate)
#   7. install config.json, model.safetensors, calibration.npz, train_config.json and
#      evaluation.json into deer_ros/pretrained/tiny/
#
# Knobs (environment variables, defaults in brackets): WORK [runs/default_policy], DEMOS [400],
# CHAIN_LENGTH [1], JOINT_STEPS [2000], HEAD_STEPS [300], PROPRIO_STEPS [2250], PROPRIO_HEAD_STEPS [200], BATCH [4],
# TEXT_STEPS [4000], TEXT_HEAD_STEPS [300], TEXT_BATCH [8], EXIT_HEAD_STEPS [600], CHAINS [32],
# THREADS [1], SEED [1], INSTALL_DIR [deer_ros/pretrained/tiny].
# Re-running skips a finished collection and resumes an interrupted training run.
# --state-weight 1: the tiny model's vision stack starts from random weights; without the robot-state
# auxiliary it stayed blind (docs/training.md, section 4). Images alone did not give a policy that finishes
# tasks in closed loop; the robot state (step 3) is what made it act (docs/training.md).
# CHAIN_LENGTH=1 records every demo from a fresh start state (the robot at its home pose). Chained demos
# (--chain-length 5, started where the previous subtask left off) were tried as extra data and not kept:
# docs/training.md, section 4.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
WORK="${WORK:-runs/default_policy}"
DEMOS="${DEMOS:-400}"
CHAIN_LENGTH="${CHAIN_LENGTH:-1}"
JOINT_STEPS="${JOINT_STEPS:-2000}"
HEAD_STEPS="${HEAD_STEPS:-300}"
PROPRIO_STEPS="${PROPRIO_STEPS:-2250}"
PROPRIO_HEAD_STEPS="${PROPRIO_HEAD_STEPS:-200}"
BATCH="${BATCH:-4}"
TEXT_STEPS="${TEXT_STEPS:-4000}"
TEXT_HEAD_STEPS="${TEXT_HEAD_STEPS:-300}"
TEXT_BATCH="${TEXT_BATCH:-8}"
EXIT_HEAD_STEPS="${EXIT_HEAD_STEPS:-600}"
CHAINS="${CHAINS:-32}"
THREADS="${THREADS:-1}"
SEED="${SEED:-1}"
DEST="${INSTALL_DIR:-$ROOT/deer_ros/pretrained/tiny}"
mkdir -p "$WORK"
SECONDS=0

if [ ! -f "$WORK/collect_summary.json" ]; then
  echo "== collect: $DEMOS demos"
  rm -rf "$WORK/data"
  "$PY" -m deer_ros.cli collect --output "$WORK/data" --episodes "$DEMOS" --seed "$SEED" \
    --chain-length "$CHAIN_LENGTH" --no-progress | sed '/^pybullet build time\|^argv\[0\]/d' > "$WORK/collect_summary.json.tmp"
  mv "$WORK/collect_summary.json.tmp" "$WORK/collect_summary.json"
fi
echo "== collect done at ${SECONDS}s"

echo "== train: $JOINT_STEPS joint + $HEAD_STEPS head steps"
"$PY" -m deer_ros.cli train --data "$WORK/data" --output "$WORK/train" --model tiny \
  --joint-steps "$JOINT_STEPS" --head-steps "$HEAD_STEPS" --batch-size "$BATCH" \
  --lr 5e-4 --head-lr-scale 1 --head-stage-lr 1e-4 --warmup-steps 100 --schedule cosine --state-weight 1 \
  --log-every 25 --eval-every 250 --save-every 250 --val-windows 64 --calibration-windows 0 \
  --threads "$THREADS" --num-workers 1 --seed "$SEED" --no-progress --resume
echo "== train done at ${SECONDS}s"

echo "== train with proprioception: $PROPRIO_STEPS joint + $PROPRIO_HEAD_STEPS head steps"
"$PY" -m deer_ros.cli train --data "$WORK/data" --output "$WORK/train_proprio" --model "$WORK/train/policy" \
  --add-proprio --joint-steps "$PROPRIO_STEPS" --head-steps "$PROPRIO_HEAD_STEPS" --batch-size "$BATCH" \
  --lr 3e-4 --head-lr-scale 1 --head-stage-lr 1e-4 --warmup-steps 25 --schedule cosine --state-weight 1 --task-weight 0.1 \
  --log-every 25 --eval-every 200 --save-every 200 --val-windows 64 --calibration-windows 0 \
  --threads "$THREADS" --num-workers 1 --seed "$SEED" --no-progress --resume
echo "== proprio train done at ${SECONDS}s"

echo "== train with the sentence encoder: $TEXT_STEPS joint + $TEXT_HEAD_STEPS head steps"
"$PY" -m deer_ros.cli train --data "$WORK/data" --output "$WORK/train_text" --model "$WORK/train_proprio/policy" \
  --sentence-encoder --joint-steps "$TEXT_STEPS" --head-steps "$TEXT_HEAD_STEPS" --batch-size "$TEXT_BATCH" \
  --lr 3e-4 --head-lr-scale 1 --head-stage-lr 1e-4 --warmup-steps 50 --schedule cosine --state-weight 1 --task-weight 0.5 \
  --log-every 25 --eval-every 500 --save-every 200 --val-windows 64 --calibration-windows 0 \
  --threads "$THREADS" --num-workers 1 --seed "$SEED" --no-progress --resume
echo "== sentence-encoder train done at ${SECONDS}s"

echo "== exits after every layer: $EXIT_HEAD_STEPS head steps"
"$PY" -m deer_ros.cli train --data "$WORK/data" --output "$WORK/train_exits" --model "$WORK/train_text/policy" \
  --exit-interval 1 --joint-steps 0 --head-steps "$EXIT_HEAD_STEPS" --batch-size "$TEXT_BATCH" \
  --head-stage-lr 1e-4 --warmup-steps 50 --schedule cosine \
  --log-every 25 --eval-every 300 --save-every 300 --val-windows 64 --calibration-windows 256 \
  --threads "$THREADS" --num-workers 1 --seed "$SEED" --no-progress --resume
echo "== exit re-spacing done at ${SECONDS}s"

echo "== evaluate: $CHAINS chains"
"$PY" -m deer_ros.cli evaluate --policy deer_ros.policy.chain_policy:deer_policy \
  --policy-kwargs "{\"source\": \"$WORK/train_exits/policy\"}" --num-chains "$CHAINS" --no-progress \
  --output "$WORK/evaluation.json"
echo "== evaluate done at ${SECONDS}s"

mkdir -p "$DEST"
cp "$WORK/train_exits/policy/config.json" "$WORK/train_exits/policy/model.safetensors" \
  "$WORK/train_exits/policy/calibration.npz" "$WORK/train_exits/train_config.json" "$WORK/evaluation.json" "$DEST/"
echo "installed into $DEST (total ${SECONDS}s)"
