#!/usr/bin/env bash
# Short run of the kill/resume harness (tests/reliability/kill_resume.py): 3 SIGKILL trials at
# random moments (checkpoint writes slowed by the SMT_TEST_SLOW_CHECKPOINT_MS test hook), one
# SIGTERM and one SIGINT trial; every resumed run must match an uninterrupted one exactly.
# Standalone, with more trials: python3 tests/reliability/kill_resume.py build/cpu/smt . --trials 20 --graceful
# usage: kill_resume.sh SMT_BINARY PROJECT_ROOT
set -eu
python3 "$2/tests/reliability/kill_resume.py" "$1" "$2" --trials 3 --max-kills 1 --steps 16 --graceful
