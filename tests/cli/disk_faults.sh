#!/usr/bin/env bash
# Disk faults. (1) Full disk: checkpoints go to a 3.5 MB tmpfs that holds one checkpoint (~2.2 MB)
# but not a second: the run stops with exit code 1 and one message naming the checkpoint and
# "No space left on device"; the previous checkpoint stays complete, named by `latest`, verifiable
# (`smt inspect` checks every tensor's crc32) and resumable; no temp file is left behind.
# Without permission to mount (not root), the same is shown with a file-size limit (ulimit -f,
# EFBIG "File too large") and the script says so. (2) An unwritable run folder or checkpoint folder
# (read-only mount, or chmod when not root, or a path under a regular file) is refused at start-up
# with exit code 2, before any training.
# usage: disk_faults.sh SMT_BINARY PROJECT_ROOT
set -u
smt=$1; root=$2
tmp=$(mktemp -d)
mounted=()
cleanup() { for m in "${mounted[@]}"; do umount "$m" 2>/dev/null; done; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
args=(--config "$root/configs/synthetic-tiny.ini" --model.d_model=64 --model.expert_hidden=64 --train.seq_len=64
      --model.block_size=16 --model.window=32 --data.synthetic_train=256 --data.synthetic_heldout=64
      --train.log_every=1 --train.threads=1 --train.warmup=3 --checkpoint.every=2)

# ---- (1) full disk ----
ck=$tmp/small
mkdir -p "$ck"
if mount -t tmpfs -o size=3500k tmpfs "$ck" 2>"$tmp/mount.err"; then
  mounted+=("$ck")
  echo "full disk: 3.5 MB tmpfs at $ck"
  "$smt" train "${args[@]}" --train.steps=8 --run.dir "$tmp/run" --checkpoint.dir "$ck" >"$tmp/full.log" 2>&1; rc=$?
  want_err="No space left on device"
else
  echo "full disk: cannot mount a tmpfs ($(head -c 200 "$tmp/mount.err")); using a file-size limit (ulimit -f) instead"
  "$smt" train "${args[@]}" --train.steps=2 --run.dir "$tmp/run" --checkpoint.dir "$ck" >"$tmp/first.log" 2>&1 \
    || { cat "$tmp/first.log"; fail "the first checkpoint could not be written"; }
  (trap '' XFSZ; ulimit -f 1000; exec "$smt" train "${args[@]}" --train.steps=8 --run.dir "$tmp/run" --checkpoint.dir "$ck" --resume) \
    >"$tmp/full.log" 2>&1; rc=$?
  want_err="File too large"
fi
[ $rc -eq 1 ] || { cat "$tmp/full.log"; fail "full disk: exit code $rc, want 1"; }
grep -q "error: cannot write checkpoint $ck/step-00000004.h5: .*$want_err" "$tmp/full.log" \
  || { cat "$tmp/full.log"; fail "full disk: no message naming step-00000004.h5 and '$want_err'"; }
[ "$(grep -c error "$tmp/full.log")" = 1 ] || { cat "$tmp/full.log"; fail "more than one error line"; }
ls "$ck" | grep -q tmp && { ls -la "$ck"; fail "a temp file was left on the full disk"; }
[ ! -e "$ck/step-00000004.h5" ] || fail "a partial step-00000004.h5 exists"
[ "$(cat "$ck/latest")" = "step-00000002.h5" ] || fail "latest names '$(cat "$ck/latest")', want step-00000002.h5"
"$smt" inspect "$ck/step-00000002.h5" >"$tmp/inspect.log" 2>&1 || { cat "$tmp/inspect.log"; fail "step 2 no longer verifies"; }
mkdir -p "$tmp/again/checkpoints"; cp "$ck/step-00000002.h5" "$tmp/again/checkpoints/"
"$smt" train "${args[@]}" --train.steps=3 --run.dir "$tmp/again" --resume >"$tmp/again.log" 2>&1 \
  || { cat "$tmp/again.log"; fail "the kept checkpoint does not resume"; }
grep -q "resuming from .*step-00000002.h5 at step 2" "$tmp/again.log" || fail "did not resume from step 2"
echo "full disk: exit 1, '$want_err' named, step-00000002.h5 intact and resumable"

# ---- (2) unwritable folders are refused at start-up ----
refused() {  # refused NAME EXPECTED_MESSAGE_REGEX ARGS...
  local name=$1 msg=$2; shift 2
  "$smt" train "${args[@]}" --train.steps=8 "$@" >"$tmp/$name.log" 2>&1; local rc=$?
  [ $rc -eq 2 ] || { cat "$tmp/$name.log"; fail "$name: exit code $rc, want 2"; }
  grep -q "$msg" "$tmp/$name.log" || { cat "$tmp/$name.log"; fail "$name: message does not match '$msg'"; }
  grep -q "step 1/" "$tmp/$name.log" && fail "$name: training started"
  echo "$name: refused at start-up: $(grep error "$tmp/$name.log")"
}
touch "$tmp/a-file"
refused run_under_file "cannot create run folder $tmp/a-file/run" --run.dir "$tmp/a-file/run"
refused ckpt_under_file "cannot create checkpoint folder $tmp/a-file/ck" --run.dir "$tmp/r1" --checkpoint.dir "$tmp/a-file/ck"
[ -e "$tmp/r1/metrics.jsonl" ] && fail "ckpt_under_file: metrics.jsonl was created before the refusal"
ro=$tmp/ro; mkdir -p "$ro"
if mount -t tmpfs -o ro,size=64k tmpfs "$ro" 2>/dev/null; then
  mounted+=("$ro")
elif [ "$(id -u)" != 0 ]; then
  chmod 555 "$ro"
else
  echo "read-only folder: cannot mount as root here; the cases under a regular file above cover it"; exit 0
fi
refused run_read_only "run folder $ro is not writable" --run.dir "$ro"
refused ckpt_read_only "checkpoint folder $ro is not writable" --run.dir "$tmp/r2" --checkpoint.dir "$ro"
