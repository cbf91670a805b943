#!/usr/bin/env bash
# One-command tests: ./setup.sh (idempotent), then pytest on test/ with an isolated ROS env.
#   ./test.sh                      whole suite
#   ./test.sh -k image -x          extra arguments go to pytest
#   ./test.sh test/test_messages.py
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
./setup.sh

# DDS discovery stays on this host (the default multicasts out of the NIC; ROS_LOCALHOST_ONLY
# is ignored by Kilted), and logs go to a throwaway ROS_HOME instead of ~/.ros.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
unset ROS_LOCALHOST_ONLY ROS_STATIC_PEERS
ROS_HOME="$(mktemp -d "${TMPDIR:-/tmp}/deer_ros_test.XXXXXX")"
export ROS_HOME
trap 'rm -rf "$ROS_HOME"' EXIT
# ROS_DOMAIN_ID: test/conftest.py reserves a block of ids no other concurrent run holds
# (override with DEER_ROS_TEST_DOMAIN_BASE) and gives each test its own id from it.

# The console script, not `python -m pytest`: that would put the repo root on sys.path,
# where e.g. launch/ would import as an empty namespace package.
"$ROOT/.venv/bin/pytest" "$@"
