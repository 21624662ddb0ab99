#!/usr/bin/env bash
# smt inspect / smt export on files that are not checkpoints: one line on stderr, exit code 1,
# no output file. (Valid checkpoints are written and inspected by tests/unit/test_checkpoint.cpp.)
# usage: checkpoint_bad_input.sh SMT_BINARY PROJECT_ROOT
set -u
smt=$1; root=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. "$root/tests/cli/lib/expect.bash"  # expect CODE PATTERN -- args...
# The subcommands must be wired into src/app/main.cpp.
if "$smt" inspect --help 2>&1 | grep -q "unknown command"; then
  echo "FAIL: 'smt inspect' is not dispatched by src/app/main.cpp (add cmd_inspect / cmd_export from app/commands_io.h)"
  exit 1
fi
printf 'this is not a checkpoint\n' >"$tmp/text.h5"
: >"$tmp/empty.h5"
head -c 4096 /dev/urandom >"$tmp/random.h5"
# An HDF5 signature followed by garbage: looks like HDF5, cannot be opened.
{ printf '\211HDF\r\n\032\n'; head -c 2048 /dev/zero; } >"$tmp/trunc.h5"
mkdir "$tmp/folder.h5"
expect 1 "is not an HDF5 file" -- inspect "$tmp/text.h5"
expect 1 "is not an HDF5 file" -- inspect "$tmp/text.h5" --json
expect 1 "is empty" -- inspect "$tmp/empty.h5"
expect 1 "is not an HDF5 file" -- inspect "$tmp/random.h5"
expect 1 "damaged or truncated" -- inspect "$tmp/trunc.h5"
expect 1 "No such file or directory" -- inspect "$tmp/missing.h5"
expect 1 "is a folder" -- inspect "$tmp/folder.h5"
expect 2 "needs a checkpoint file" -- inspect
expect 1 "is not an HDF5 file" -- export "$tmp/text.h5" --format safetensors --out "$tmp/out.safetensors"
expect 1 "damaged or truncated" -- export "$tmp/trunc.h5" --format safetensors --out "$tmp/out.safetensors"
expect 2 "format must be safetensors" -- export "$tmp/text.h5" --format onnx --out "$tmp/out.onnx"
expect 2 "needs --out" -- export "$tmp/text.h5" --format safetensors
for f in "$tmp/out.safetensors" "$tmp/out.onnx"; do
  [ -e "$f" ] && { echo "FAIL: $f was written by a failed export"; fails=$((fails+1)); }
done
ls "$tmp" | grep -q "tmp-" && { echo "FAIL: temporary files left: $(ls "$tmp")"; fails=$((fails+1)); }
# The inputs are unchanged (inspect never writes).
[ "$(cat "$tmp/text.h5")" = "this is not a checkpoint" ] || { echo "FAIL: text.h5 changed"; fails=$((fails+1)); }
echo "$checks bad inputs checked; $fails failures"
[ "$fails" -eq 0 ]
