#!/usr/bin/env bash
# Quick start, part 1: install, then run the demo pipeline on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
# Keep this machine's local Ray on loopback (see docs/guide.md, "Ray on one machine"); override as you like.
export FUSION_RAY__NODE_IP_ADDRESS=${FUSION_RAY__NODE_IP_ADDRESS-127.0.0.2}
exec .venv/bin/fusion demo "$@"
