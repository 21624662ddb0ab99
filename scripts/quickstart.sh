#!/usr/bin/env bash
# The main job on a fresh machine: install, build (cpu preset), train on the built-in synthetic
# claims with configs/synthetic-tiny.ini and print the held-out evaluation summary. The run goes to
# RUN_DIR (default runs/synthetic-tiny) and starts over there (--overwrite) if an earlier run is in it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset cpu >/dev/null
cmake --build --preset cpu -j"$(nproc)"
./build/cpu/smt train --config configs/synthetic-tiny.ini --run.dir "${RUN_DIR:-runs/synthetic-tiny}" --overwrite
