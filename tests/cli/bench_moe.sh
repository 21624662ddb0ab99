#!/usr/bin/env bash
# smt bench moe on the CPU (small T): the table has one row per size, the JSON rows carry the keys
# bench/run_b2.sh reads with values consistent with each other (dropless rows = k*T, tokens/s = T / time,
# TFLOP/s from the B2 FLOP count), and bad flags exit 2 with one message.
# usage: bench_moe.sh SMT_BINARY PROJECT_ROOT
set -u
smt=$1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
source "$2/tests/cli/lib/expect.bash"

"$smt" bench moe --device cpu --tokens 96 --d 32 --f 48 --experts 4 --top-k 2 --warmup 0 --repeat 2 >"$tmp/table" 2>&1 \
  || { echo "FAIL: bench moe (table) exited $?"; cat "$tmp/table"; exit 1; }
cat "$tmp/table"
checks=$((checks+1))
if grep -q "^ *32 *48 *192 " "$tmp/table" && grep -q "precision fp32" "$tmp/table"; then echo "ok: table row"
else echo "FAIL: no 'd 32 f 48 rows 192' row in the table"; fails=$((fails+1)); fi

"$smt" bench moe --device cpu --tokens 64 --d 16 --f 24 --experts 3 --top-k 2 --warmup 1 --repeat 1 --json \
  >"$tmp/rows.jsonl" 2>"$tmp/err" || { echo "FAIL: bench moe --json exited $?"; cat "$tmp/err"; exit 1; }
"$smt" bench moe --device cpu --tokens 40 --d 8 --f 8 --experts 2 --top-k 1 --repeat 1 --json \
  >>"$tmp/rows.jsonl" 2>>"$tmp/err" || { echo "FAIL: bench moe --json (k=1) exited $?"; cat "$tmp/err"; exit 1; }
checks=$((checks+1))
python3 - "$tmp/rows.jsonl" <<'PY' && echo "ok: json rows" || fails=$((fails+1))
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 2, f"{len(rows)} JSON rows, want 2"
for r in rows:
    for key in ("impl", "device", "precision", "T", "d", "f", "E", "k", "rows", "fwd_ms", "fwdbwd_ms",
                "fwdbwd_expert_tflops", "tokens_per_s", "gemm_backend"):
        assert key in r, f"row without {key}: {r}"
    assert r["impl"] == "smt" and r["device"] == "cpu" and r["precision"] == "fp32", r
    assert r["rows"] == r["k"] * r["T"], r  # dropless
    assert 0 < r["fwd_ms"] < r["fwdbwd_ms"], r
    assert abs(r["tokens_per_s"] - r["T"] / (r["fwdbwd_ms"] * 1e-3)) <= 1e-6 * r["tokens_per_s"], r
    flops = 3 * r["k"] * r["T"] * 2 * 2 * r["d"] * r["f"]
    assert abs(r["fwdbwd_expert_tflops"] - flops / (r["fwdbwd_ms"] * 1e-3) / 1e12) <= 1e-6 * r["fwdbwd_expert_tflops"], r
assert (rows[0]["T"], rows[0]["d"], rows[0]["f"], rows[0]["E"], rows[0]["k"]) == (64, 16, 24, 3, 2), rows[0]
assert (rows[1]["E"], rows[1]["k"], rows[1]["rows"]) == (2, 1, 40), rows[1]
PY

expect 2 "cpu or cuda" -- bench moe --device tpu
expect 2 "fp32 or bf16" -- bench moe --precision fp16
expect 2 "needs --device cuda" -- bench moe --device cpu --precision bf16
expect 2 "go together" -- bench moe --d 64
expect 2 "--tokens" -- bench moe --tokens 0
expect 2 "--top-k" -- bench moe --experts 4 --top-k 5
expect 2 "--experts" -- bench moe --experts 65
expect 2 "--repeat" -- bench moe --repeat 0
expect 2 "" -- bench moe --no-such-flag
echo "$checks checks, $fails failed"
[ $fails -eq 0 ]
