#!/usr/bin/env bash
# smt bench attention on the CPU: one row per pattern with densities and times, the JSON rows
# agree with the mask (dense density 1, causal about one half), bad flags exit 2 (among them
# --kernel flash on the CPU, which has the reference kernels only).
# usage: bench_attention.sh SMT_BINARY PROJECT_ROOT
set -u
smt=$1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fails=0
"$smt" bench attention --device cpu --seq 256,320 --heads 2 --block 32 --warmup 0 --repeat 1 --json "$tmp/rows.jsonl" \
  >"$tmp/out" 2>&1 || { echo "FAIL: bench attention exited $?"; cat "$tmp/out"; exit 1; }
cat "$tmp/out"
for p in dense causal local random block_sparse bigbird; do
  n=$(grep -c "^$p " "$tmp/out")
  [ "$n" -eq 2 ] || { echo "FAIL: $n rows for $p (want 2: N=256 and N=320)"; fails=$((fails+1)); }
done
python3 - "$tmp/rows.jsonl" <<'PY' || fails=$((fails+1))
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 12, f"{len(rows)} JSON rows, want 12"
for r in rows:
    for k in ("pattern", "seq_len", "element_density", "block_density", "fwd_ms", "bwd_ms", "total_ms", "useful_tflops", "mem_mib"):
        assert k in r, f"row without {k}: {r}"
    assert r["fwd_ms"] > 0 and r["bwd_ms"] > 0, r
    assert 0 < r["element_density"] <= r["block_density"] <= 1, r
    assert r["kernel"] == "reference", r
dense = [r for r in rows if r["pattern"] == "dense"]
assert all(r["element_density"] == 1.0 for r in dense), dense
causal = {r["seq_len"]: r["element_density"] for r in rows if r["pattern"] == "causal"}
# causal: (N+1)/(2N) of the pairs
assert all(abs(d - (n + 1) / (2 * n)) < 1e-12 for n, d in causal.items()), causal
print("json rows ok")
PY
"$smt" bench attention --device tpu >"$tmp/err" 2>&1; rc=$?
{ [ $rc -eq 2 ] && grep -q "cpu or cuda" "$tmp/err"; } || { echo "FAIL: --device tpu -> $rc: $(cat "$tmp/err")"; fails=$((fails+1)); }
"$smt" bench attention --seq 0 >"$tmp/err" 2>&1; rc=$?
[ $rc -eq 2 ] || { echo "FAIL: --seq 0 -> $rc: $(cat "$tmp/err")"; fails=$((fails+1)); }
"$smt" bench attention --device cpu --kernel flash >"$tmp/err" 2>&1; rc=$?
{ [ $rc -eq 2 ] && grep -q "needs --device cuda" "$tmp/err"; } || { echo "FAIL: cpu --kernel flash -> $rc: $(cat "$tmp/err")"; fails=$((fails+1)); }
"$smt" bench attention --kernel fast >"$tmp/err" 2>&1; rc=$?
{ [ $rc -eq 2 ] && grep -q "flash or reference" "$tmp/err"; } || { echo "FAIL: --kernel fast -> $rc: $(cat "$tmp/err")"; fails=$((fails+1)); }
"$smt" bench attention --dq sometimes >"$tmp/err" 2>&1; rc=$?
{ [ $rc -eq 2 ] && grep -q "atomic or deterministic" "$tmp/err"; } || { echo "FAIL: --dq sometimes -> $rc: $(cat "$tmp/err")"; fails=$((fails+1)); }
[ $fails -eq 0 ]
