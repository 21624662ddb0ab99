"""Reads `smt bench exchange` JSON lines on stdin; prints each run and the median ratio per world size."""
import json
import statistics
import sys

rows = [json.loads(line) for line in sys.stdin if line.startswith("{")]
for np in sorted({r["world_size"] for r in rows}):
    rs = [r for r in rows if r["world_size"] == np]
    for r in rs:
        print(f"np {np}: smt {1e3 * r['smt_s']:.1f} ms, MPI_Alltoallv {1e3 * r['alltoallv_s']:.1f} ms, ratio {r['ratio']:.3f}")
    r0 = rs[0]
    print(f"np {np}: median ratio over {len(rs)} runs: {statistics.median(r['ratio'] for r in rs):.3f} "
          f"({r0['bytes_per_rank_per_move'] / 2**20:.0f} MiB per rank per move, {r0['tokens_per_rank']} tokens x "
          f"d {r0['d_model']}, top-{r0['top_k']} of {r0['experts']} experts)")
