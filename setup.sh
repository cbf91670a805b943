#!/usr/bin/env bash
# One-command setup for the venv route (no system ROS needed): docs/install.md.
#
#   ./setup.sh              create/refresh .venv (idempotent; seconds when up to date)
#   ./setup.sh demo [ARGS]  the same, then run `deer-ros demo ARGS`
#
# Steps, each skipped while its hash stamp (in .venv/.deer_ros/) still matches:
#   1. system packages a bare Debian 12 lacks (python3-venv, python3-dev, g++), via apt as root
#   2. .venv with the pinned wheels of requirements/*.txt (constrained by requirements/lock.txt)
#   3. msg/ -> generated `deer_ros.msg` in .venv, built by colcon (rosidl, ament_cmake)
#   4. the library itself, editable (`pip install -e .`) + console scripts in .venv/bin
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
STATE="$VENV/.deer_ros"   # stamps and the colcon build tree live and die with the venv
PY="$VENV/bin/python"
PYTHON="${PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
  '' | demo) ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; die "unknown argument: $1" ;;
esac

cd "$ROOT"
# Several shells (test.sh runs, other engineers) may share one checkout: serialise on
# this script's own file so two pip/colcon runs never write into the venv at once.
exec 9<"${BASH_SOURCE[0]}"
flock 9

# Hash of the given paths (names and contents; missing paths count as absent).
hash_of() {
  local p existing=()
  for p in "$@"; do [[ -e $p ]] && existing+=("$p"); done
  {
    printf '%s\n' "$@"
    if ((${#existing[@]})); then
      find "${existing[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
        | LC_ALL=C sort -z | xargs -0 -r sha256sum
    fi
  } | sha256sum | cut -c1-64
}

stamp_ok() { [[ -f $STATE/$1.stamp && $(<"$STATE/$1.stamp") == "$2" ]]; }
stamp_set() { mkdir -p "$STATE" && printf '%s\n' "$2" >"$STATE/$1.stamp"; }

install_system_packages() {
  local need=()
  if ! command -v "$PYTHON" >/dev/null; then
    need+=(python3 python3-venv python3-dev)
  else
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
    "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
      || need+=(python3-dev)
  fi
  command -v g++ >/dev/null || need+=(g++)
  ((${#need[@]})) || return 0
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    die "missing system packages: ${need[*]} (Debian: sudo apt-get install ${need[*]})"
  fi
  log "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

start=$SECONDS
if [[ ! -x $PY ]]; then
  install_system_packages
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); the ROS 2 wheels need CPython 3.11 (set PYTHON=...)"
  log "creating .venv with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
SITE="$(echo "$VENV"/lib/python3.*/site-packages)"

# 2. Python dependencies. One pip command for everything, so setuptools stays <80
#    even though torch's requirements would upgrade it.
pip_hash="$(hash_of requirements "$VENV/pyvenv.cfg")"
if ! stamp_ok pip "$pip_hash"; then
  log "installing pinned Python packages (requirements/*.txt)"
  "$PY" -m pip install -q --disable-pip-version-check \
    -r requirements/build.txt -r requirements/ros.txt -r requirements/ml.txt \
    -r requirements/test.txt -c requirements/lock.txt \
    || die "pip install failed; for torch==2.13.0+cpu outside this machine add the PyTorch CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu ./setup.sh"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps -r requirements/no-deps.txt
  "$PY" scripts/check_venv.py || die "the venv breaks a rule above"
  stamp_set pip "$pip_hash"
fi

# 3. Interfaces. DEER_ROS_INSTALL_LIBRARY=OFF: only the generated code is installed, as a
#    namespace portion, so the editable source package below is the one `import deer_ros` finds.
msg_hash="$(hash_of CMakeLists.txt package.xml msg srv action config launch scripts) $pip_hash"
if ! stamp_ok msg "$msg_hash" || [[ ! -f $SITE/deer_ros/msg/__init__.py ]]; then
  log "building msg/ into .venv with colcon (rosidl)"
  [[ -z ${ROS_DISTRO:-} ]] || log "ignoring the sourced ROS ($ROS_DISTRO): the venv uses only its own wheels"
  env -u PYTHONPATH -u CMAKE_PREFIX_PATH -u COLCON_PREFIX_PATH \
    PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" COLCON_HOME="$STATE/colcon" \
    "$VENV/bin/colcon" --log-base "$STATE/log" build \
    --paths "$ROOT" --merge-install --install-base "$VENV" --build-base "$STATE/build" \
    --event-handlers status- desktop_notification- terminal_title- \
    --cmake-args -G Ninja -DBUILD_TESTING=OFF -DDEER_ROS_INSTALL_LIBRARY=OFF "-DPython3_EXECUTABLE=$PY" \
    || die "colcon build failed; log: $STATE/log/latest_build"
  [[ ! -e $SITE/deer_ros/__init__.py ]] || die "$SITE/deer_ros/__init__.py would shadow the source package"
  stamp_set msg "$msg_hash"
fi

# 4. The library: editable, so edits and new modules under deer_ros/ need no re-run.
#    pip gives metadata + console scripts. Its import hook alone cannot work here: it runs
#    after the normal path search, which would stop at site-packages/deer_ros (the generated
#    namespace portion) and never run deer_ros/__init__.py. So a .pth adds a directory whose
#    only entry links to the source package; a regular package found anywhere on sys.path
#    beats a namespace portion, and its pkgutil.extend_path() merges deer_ros.msg back in.
lib_hash="$(hash_of setup.py setup.cfg) $pip_hash $ROOT"
if ! stamp_ok lib "$lib_hash" || [[ ! -x $VENV/bin/deer-ros ]]; then
  log "installing deer_ros (editable) and its console scripts"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
  stamp_set lib "$lib_hash"
fi
mkdir -p "$STATE/src"
[[ $(readlink "$STATE/src/deer_ros" 2>/dev/null) == "$ROOT/deer_ros" ]] \
  || ln -sfn "$ROOT/deer_ros" "$STATE/src/deer_ros"
[[ -f $SITE/deer_ros_source.pth && $(<"$SITE/deer_ros_source.pth") == "$STATE/src" ]] \
  || printf '%s\n' "$STATE/src" >"$SITE/deer_ros_source.pth"

log "ready in $((SECONDS - start)) s: .venv (run tools as .venv/bin/<tool>, e.g. .venv/bin/deer-ros)"

if [[ ${1:-} == demo ]]; then
  shift
  exec 9<&-
  exec "$VENV/bin/deer-ros" demo "$@"
fi
