#!/usr/bin/env bash
# Train the frozen-trunk candidate policy of issue 20 (config tiny-efficientnet) end to end on the embedded simulator,
# as it was run (docs/training.md, section 4); it is not the shipped default (scripts/reproduce_default_policy.sh):
#   1. collect scripted-expert demonstrations in CALVIN format, two recordings in parallel (deer-ros collect),
#      every demo from a fresh start state with the robot at its home pose
#   2. collect extra demos of the tasks the previous policy failed most (rotate, lift from the slider,
#      light bulb), with parallel workers (deer-ros collect --workers --tasks)
#   3. train config tiny-efficientnet (frozen ImageNet EfficientNet-Lite0 trunk, MiniLM instruction states,
#      robot-state token, an exit after each of 12 decoder layers): the trunk's features are computed once per
#      frame into a cache beside the data (built on first use by deer-ros train), then the joint stage (aux heads +
#      s1/s2 mixed-exit histories + state and task probes) and the heads stage
#   4. train on from its policy with a second cosine schedule (the auxiliary heads start again), calibration file
#      written beside the weights
#   5. evaluate it on 5-instruction chains                          (deer-ros evaluate)
#   6. install config.json, model.safetensors, calibration.npz, train_config.json and evaluation.json into
#      INSTALL_DIR
#
# Knobs (environment variables, defaults in brackets): WORK [runs/default_policy], DEMOS_A [900], DEMOS_B [877],
# EXTRA_DEMOS [400], WORKERS [2], JOINT_STEPS [800], JOINT_STEPS_2 [1000], HEAD_STEPS [100], BATCH [16], CHAINS [32],
# THREADS [2], INSTALL_DIR [$WORK/installed].
# Re-running skips finished collections and caches and resumes an interrupted training run.
# The run of docs/training.md used exactly these collections: seeds 100 and 101 (DEMOS_A / DEMOS_B demos, the
# single-process collector) and seed 200 (EXTRA_DEMOS, two workers).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
WORK="${WORK:-runs/efficientnet_policy}"
DEMOS_A="${DEMOS_A:-900}"
DEMOS_B="${DEMOS_B:-877}"
EXTRA_DEMOS="${EXTRA_DEMOS:-400}"
WORKERS="${WORKERS:-2}"
JOINT_STEPS="${JOINT_STEPS:-800}"
JOINT_STEPS_2="${JOINT_STEPS_2:-1000}"
HEAD_STEPS="${HEAD_STEPS:-100}"
BATCH="${BATCH:-16}"
CHAINS="${CHAINS:-32}"
THREADS="${THREADS:-2}"
DEST="${INSTALL_DIR:-$WORK/installed}"
mkdir -p "$WORK"
SECONDS=0

collect() {  # collect NAME ARGS...: one collection into $WORK/NAME, skipped when its summary exists
  local name=$1; shift
  if [ ! -f "$WORK/$name.json" ]; then
    rm -rf "${WORK:?}/$name"
    "$PY" -m deer_ros.cli collect --output "$WORK/$name" --chain-length 1 --no-progress "$@" \
      | sed '/^pybullet build time\|^argv\[0\]/d' > "$WORK/$name.json.tmp"
    mv "$WORK/$name.json.tmp" "$WORK/$name.json"
  fi
}

echo "== collect: $DEMOS_A + $DEMOS_B demos (two recordings in parallel), then $EXTRA_DEMOS of the hard tasks"
collect demos_a --episodes "$DEMOS_A" --seed 100 &
collect demos_b --episodes "$DEMOS_B" --seed 101 &
wait
collect demos_extra --episodes "$EXTRA_DEMOS" --seed 200 --workers "$WORKERS" \
  --tasks 'rotate_*' 'lift_*_slider' turn_on_lightbulb turn_off_lightbulb
echo "== collect done at ${SECONDS}s"

DATA=("$WORK/demos_a" "$WORK/demos_b" "$WORK"/demos_extra/shard_*)
echo "== train: $JOINT_STEPS joint + $HEAD_STEPS head steps on cached trunk features"
"$PY" -m deer_ros.cli train --data "${DATA[@]}" --output "$WORK/train" --model tiny-efficientnet \
  --joint-steps "$JOINT_STEPS" --head-steps "$HEAD_STEPS" --batch-size "$BATCH" \
  --lr 5e-4 --head-lr-scale 1 --head-stage-lr 1e-4 --warmup-steps 50 --schedule cosine \
  --state-weight 1 --task-weight 0.5 --cache-workers "$WORKERS" \
  --log-every 25 --eval-every 200 --save-every 100 --val-windows 64 --calibration-windows 0 \
  --threads "$THREADS" --num-workers 0 --seed 1 --no-progress --resume
echo "== train on: $JOINT_STEPS_2 joint + $HEAD_STEPS head steps"
"$PY" -m deer_ros.cli train --data "${DATA[@]}" --output "$WORK/train2" --model "$WORK/train/policy" \
  --joint-steps "$JOINT_STEPS_2" --head-steps "$HEAD_STEPS" --batch-size "$BATCH" \
  --lr 3e-4 --head-lr-scale 1 --head-stage-lr 1e-4 --warmup-steps 25 --schedule cosine \
  --state-weight 1 --task-weight 0.5 --cache-workers "$WORKERS" \
  --log-every 25 --eval-every 500 --save-every 100 --val-windows 64 --calibration-windows 256 \
  --threads "$THREADS" --num-workers 0 --seed 2 --no-progress --resume
echo "== train done at ${SECONDS}s"

echo "== evaluate: $CHAINS chains"
"$PY" -m deer_ros.cli evaluate --policy deer_ros.policy.chain_policy:deer_policy \
  --policy-kwargs "{\"source\": \"$WORK/train2/policy\"}" --num-chains "$CHAINS" --workers "$WORKERS" --no-progress \
  --output "$WORK/evaluation.json"
echo "== evaluate done at ${SECONDS}s"

mkdir -p "$DEST"
cp "$WORK/train2/policy/config.json" "$WORK/train2/policy/model.safetensors" \
  "$WORK/train2/policy/calibration.npz" "$WORK/train2/train_config.json" "$WORK/evaluation.json" "$DEST/"
echo "installed into $DEST (total ${SECONDS}s)"
