#!/usr/bin/env python3
"""Kill `smt train` at random moments, resume it, and check that nothing was lost.

A reference run trains --steps steps uninterrupted with a checkpoint after every step. Each trial
trains the same configuration in its own folder, sends SIGKILL at a random moment (1 to
--max-kills times), and resumes with --resume until the run completes. With
SMT_TEST_SLOW_CHECKPOINT_MS (a test hook of src/io/checkpoint.cpp) every checkpoint write pauses
in the middle of the temp file and again between its rename and the `latest` update, so a large
share of the kills land inside a checkpoint write.

Asserted for every kill:
  * the resumed run starts from the newest complete checkpoint on disk (the highest step-*.h5:
    files only get that name once fully written), and says so ("resuming from ... at step N");
    killed before the first checkpoint, --resume says so and starts from step 0;
and for every trial, once it completes:
  * metrics.jsonl holds each step exactly once, and every logged value except the timings is
    textually identical to the reference run's (losses, lr, grad norm, routing counts), as is the
    final evaluation record;
  * the final checkpoint's parameters are bit-identical to the reference's (via `smt export`);
  * no temp file is left in the checkpoint folder.
SIGTERM and SIGINT trials (--graceful): the run exits with 128 + signal, names the checkpoint it
wrote at the step it stopped after, and resuming from it completes identically.

usage: kill_resume.py SMT_BINARY PROJECT_ROOT [--trials N] [--graceful] [--seed S] ...
ctest runs a short version (tests/cli/kill_resume.sh); run it standalone for 20+ trials:
  python3 tests/reliability/kill_resume.py build/cpu/smt . --trials 20 --graceful
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cli", "lib"))
import safetensors_read  # noqa: E402  (the CLI tests' reader)

TIMING_KEYS = {"tokens_per_s", "step_s", "train_seconds"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("smt")
    p.add_argument("root")
    p.add_argument("--trials", type=int, default=20, help="SIGKILL trials")
    p.add_argument("--max-kills", type=int, default=2, help="kills per trial (1..this, random)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--slow-ms", type=int, default=40, help="SMT_TEST_SLOW_CHECKPOINT_MS (0 = off)")
    p.add_argument("--graceful", action="store_true", help="also one SIGTERM and one SIGINT trial")
    p.add_argument("--seed", type=int, default=None, help="seed of the kill times (default: random, printed)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    return p.parse_args()


def run_args(root, steps, run_dir):
    return ["train", "--config", os.path.join(root, "configs/synthetic-tiny.ini"),
            "--model.d_model=64", "--model.expert_hidden=64", "--train.seq_len=64", "--model.block_size=16",
            "--model.window=32", "--data.synthetic_train=256", "--data.synthetic_heldout=64",
            "--train.log_every=1", "--train.threads=1", "--train.warmup=3", f"--train.steps={steps}",
            "--checkpoint.every=1", "--checkpoint.keep=2", "--run.dir", run_dir]


def records(run_dir):
    out = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return out


def comparable(rec):
    return {k: v for k, v in rec.items() if k not in TIMING_KEYS}


def export_tensors(smt, ckpt, out):
    subprocess.run([smt, "export", ckpt, "--format", "safetensors", "--out", out], check=True,
                   stdout=subprocess.DEVNULL)
    return safetensors_read.tensors(out)


def step_files(ck_dir):
    steps = {}
    if os.path.isdir(ck_dir):
        for name in os.listdir(ck_dir):
            m = re.fullmatch(r"step-(\d+)\.h5", name)
            if m:
                steps[int(m.group(1))] = name
    return steps


def classify_kill(ck_dir):
    """Where the kill landed, judged from what it left on disk."""
    files = step_files(ck_dir)
    if not files:
        return "before the first checkpoint"
    if any(".tmp-" in n for n in os.listdir(ck_dir)):
        return "inside a checkpoint write (temp file left)"
    latest = open(os.path.join(ck_dir, "latest")).read().strip() if os.path.exists(os.path.join(ck_dir, "latest")) else ""
    if latest != files[max(files)]:
        return "between a checkpoint's rename and the latest update"
    return "between checkpoint writes"


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def compare_with_reference(smt, ref, run_dir, steps, work):
    recs, ref_recs = records(run_dir), records(ref)
    step_recs = [r for r in recs if r.get("event") == "step"]
    got_steps = [r["step"] for r in step_recs]
    check(got_steps == list(range(1, steps + 1)), f"metrics.jsonl steps are {got_steps}, want 1..{steps} once each")
    ref_steps = {r["step"]: comparable(r) for r in ref_recs if r.get("event") == "step"}
    for r in step_recs:
        check(comparable(r) == ref_steps[r["step"]],
              f"step {r['step']} differs from the uninterrupted run: {comparable(r)} vs {ref_steps[r['step']]}")
    finals = [comparable(r) for r in recs if r.get("event") == "final"]
    ref_final = [comparable(r) for r in ref_recs if r.get("event") == "final"]
    check(len(finals) == 1 and finals == ref_final, f"final record {finals} vs {ref_final}")
    name = f"step-{steps:08d}.h5"
    a = export_tensors(smt, os.path.join(ref, "checkpoints", name), os.path.join(work, "a.st"))
    b = export_tensors(smt, os.path.join(run_dir, "checkpoints", name), os.path.join(work, "b.st"))
    check(a.keys() == b.keys() and len(a) > 10, "exported tensor sets differ")
    diff = [k for k in a if a[k] != b[k]]
    check(not diff, f"final parameters differ bitwise from the uninterrupted run: {diff[:5]}")
    leftovers = [n for n in os.listdir(os.path.join(run_dir, "checkpoints")) if ".tmp-" in n]
    check(not leftovers, f"temp files left in the checkpoint folder: {leftovers}")


def start(smt, args, log, env):
    return subprocess.Popen([smt] + args, stdout=log, stderr=subprocess.STDOUT, env=env)


def resume_line_step(log_path):
    text = open(log_path).read()
    found = re.findall(r"resuming from (\S+) at step (\d+)", text)
    return found[-1] if found else None


def kill_trial(smt, root, steps, ref, work, rng, t_ref, max_kills, env, stats):
    run_dir = os.path.join(work, "run")
    ck = os.path.join(run_dir, "checkpoints")
    args = run_args(root, steps, run_dir)
    kills = rng.randint(1, max_kills)
    resume = False
    log_path = os.path.join(work, "log.txt")
    for k in range(kills + 1):
        with open(log_path, "w") as log:
            p = start(smt, args + (["--resume"] if resume else []), log, env)
            last = k == kills
            if not last:
                # Uniform over the run's remaining time (startup included).
                left = 1.0 - (expected / steps if resume else 0.0)
                time.sleep(rng.uniform(0.0, t_ref * max(left, 0.2)))
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
            rc = p.wait(timeout=600)
        text = open(log_path).read()
        decided = "resuming from" in text or "holds no checkpoint yet" in text
        if resume and rc == -signal.SIGKILL and not decided:
            stats["killed_in_startup"] += 1  # before the resume decision was printed: nothing to check yet
        elif resume:
            if expected == 0:  # killed before the first checkpoint: --resume starts from step 0
                check("holds no checkpoint yet" in text and "starting from step 0" in text,
                      f"--resume without a checkpoint: rc {rc}: {text[-300:]}")
                stats["fresh_starts"] += 1
            else:
                got = resume_line_step(log_path)
                check(got is not None and int(got[1]) == expected and got[0].endswith(f"step-{expected:08d}.h5"),
                      f"expected to resume from step {expected}, log says {got}: {text[-400:]}")
                stats["resumed_from_newest"] += 1
        if rc == -signal.SIGKILL:
            stats["kills"] += 1
            where = classify_kill(ck)
            stats["where"][where] = stats["where"].get(where, 0) + 1
            files = step_files(ck)
            expected = max(files) if files else 0
            # Killed before it created its checkpoint folder, the run left nothing: it is started again
            # as it was (--resume on a folder that never existed is refused on purpose: a mistyped
            # run.dir must not silently start from scratch, tests/cli/mpi_bad_input.sh).
            if not resume and not os.path.isdir(ck):
                stats["killed_before_folder"] += 1
                continue
            resume = True
            continue
        check(rc == 0, f"run exited {rc}: {text[-400:]}")
        if not last:
            stats["finished_before_kill"] += 1
        break
    compare_with_reference(smt, ref, run_dir, steps, work)


def graceful_trial(smt, root, steps, ref, work, rng, t_ref, sig, env, stats):
    run_dir = os.path.join(work, "run")
    args = run_args(root, steps, run_dir)
    log_path = os.path.join(work, "log.txt")
    with open(log_path, "w") as log:
        p = start(smt, args, log, env)
        # Wait for the first step line so the run is inside the training loop, then a random moment.
        deadline = time.time() + 60
        while "step 1/" not in open(log_path).read() and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, t_ref / 3))
        p.send_signal(sig)
        rc = p.wait(timeout=120)
    text = open(log_path).read()
    name = signal.Signals(sig).name
    if rc == 0:  # finished before the signal arrived: nothing to check about stopping
        stats["finished_before_kill"] += 1
        return compare_with_reference(smt, ref, run_dir, steps, work)
    check(rc == 128 + sig, f"{name}: exit code {rc}, want {128 + sig}: {text[-400:]}")
    m = re.search(name + r": stopped after step (\d+); checkpoint: (\S+) \(continue with --resume\)", text)
    check(m is not None, f"{name}: no stop message naming the checkpoint: {text[-400:]}")
    stopped, path = int(m.group(1)), m.group(2)
    check(os.path.exists(path) and path.endswith(f"step-{stopped:08d}.h5"), f"{name}: {path} missing")
    stats["graceful"] += 1
    with open(log_path, "w") as log:
        rc = subprocess.run([smt] + args + ["--resume"], stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    check(rc == 0, f"resume after {name} exited {rc}")
    got = resume_line_step(log_path)
    check(got is not None and int(got[1]) == stopped, f"resume after {name}: {got}, want step {stopped}")
    compare_with_reference(smt, ref, run_dir, steps, work)


def main():
    a = parse_args()
    smt = os.path.abspath(a.smt)
    root = os.path.abspath(a.root)
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    env = dict(os.environ)
    if a.slow_ms > 0:
        env["SMT_TEST_SLOW_CHECKPOINT_MS"] = str(a.slow_ms)
    base = tempfile.mkdtemp(prefix="smt-kill-resume-")
    stats = {"kills": 0, "resumed_from_newest": 0, "fresh_starts": 0, "killed_in_startup": 0,
             "killed_before_folder": 0, "finished_before_kill": 0, "graceful": 0, "where": {}}
    failures = []
    try:
        ref = os.path.join(base, "ref")
        t0 = time.time()
        subprocess.run([smt] + run_args(root, a.steps, ref), check=True,
                       stdout=subprocess.DEVNULL, env=env)
        t_ref = time.time() - t0
        print(f"reference run: {a.steps} steps in {t_ref:.1f} s; kill-time seed {seed}", flush=True)
        plan = [("kill", i) for i in range(a.trials)]
        if a.graceful:
            plan += [("SIGTERM", 0), ("SIGINT", 0)]
        for kind, i in plan:
            work = os.path.join(base, f"{kind}-{i}")
            os.makedirs(work)
            try:
                if kind == "kill":
                    kill_trial(smt, root, a.steps, ref, work, rng, t_ref, a.max_kills, env, stats)
                else:
                    graceful_trial(smt, root, a.steps, ref, work, rng, t_ref, getattr(signal, kind), env, stats)
                print(f"  {kind} trial {i}: ok", flush=True)
            except (Failure, subprocess.SubprocessError, OSError, ValueError) as e:
                failures.append(f"{kind} trial {i}: {e}")
                print(f"  {kind} trial {i}: FAILED: {e}", flush=True)
            if not a.keep and not failures:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if not a.keep and not failures:
            shutil.rmtree(base, ignore_errors=True)
        elif failures or a.keep:
            print(f"work folder kept: {base}")
    where = ", ".join(f"{n} {w}" for w, n in sorted(stats["where"].items(), key=lambda x: -x[1]))
    print(f"{a.trials} kill trials: {stats['kills']} SIGKILLs ({where}); "
          f"{stats['resumed_from_newest']} resumes from the newest complete checkpoint, "
          f"{stats['fresh_starts']} from step 0 (killed before the first checkpoint), "
          f"{stats['killed_in_startup']} resumed runs killed again before deciding; "
          f"{stats['killed_before_folder']} first runs killed before creating their folder (started again); "
          f"{stats['graceful']} graceful SIGTERM/SIGINT stops; "
          f"{stats['finished_before_kill']} runs finished before their signal; "
          f"{len(failures)} failures (seed {seed})")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
