"""Plant small bugs, one at a time, on a temporary copy of the repository and report which tests catch each.

    python benchmarks/mutation_check.py                 # every mutation (about 10 minutes on 2 cores)
    python benchmarks/mutation_check.py --only store    # those whose name contains "store" (no report written)
    python benchmarks/mutation_check.py --list

Run by hand (not in CI).  Each mutation is an exact text replacement that must apply once; the copy's tests
named for it run with -x, and the mutation counts as caught when they fail.  Writes a JSON report (--out) with
the failing test of each; exits 1 if any planted bug is not caught.  The list holds the bugs the test-strength
issue found unguarded, and more of the same kind: each claim of the README should have a test that can fail.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation("store: data CRC not checked on reopen", "bmojo/memory/disk.py",
             "        bad = _first_corrupt(path, size, segs)\n", "        bad = None\n",
             ("tests/memory/test_store_integrity.py",)),
    Mutation("store: commit-record CRC not checked", "bmojo/memory/disk.py",
             "if magic != MAGIC or crc != zlib.crc32(raw[off:off + COMMIT.size - 4]) or",
             "if magic != MAGIC or", ("tests/memory/test_store_integrity.py",)),
    Mutation("store: retrieved values detached in the store-reading attention", "bmojo/ops/attention.py",
             "        ek, ev, evis = (_block_rows(t, shape) for t in extra)",
             "        ek, ev, evis = (_block_rows(t, shape) for t in extra)\n        ev = ev.detach()",
             ("tests/memory/test_store.py",)),
    Mutation("checkpoint: written in place, not to a temporary folder", "bmojo/train/checkpoint.py",
             '    tmp = path.with_name(f".{path.name}.tmp")\n',
             '    tmp = path\n    shutil.rmtree(path, ignore_errors=True)\n',
             ("tests/train/test_crash_points.py",)),
    Mutation("checkpoint: the old one removed before the new one is in place", "bmojo/train/checkpoint.py",
             "        path.rename(old)\n", "        shutil.rmtree(path)\n",
             ("tests/train/test_crash_points.py",)),
    Mutation("eidetic memory: the weakest entry dropped at every update", "bmojo/ops/eidetic.py",
             "            span *= 2\n", "            S[..., -1] = N\n            span *= 2\n",
             ("tests/ops/test_eidetic.py", "tests/layers/test_special_cases.py")),
    Mutation("eidetic memory: ties go to the newer entry", "bmojo/ops/eidetic.py",
             "    order = priority_key(pool.score, pool.pos, C, decay).argsort(",
             "    order = (priority_key(pool.score, pool.pos, C, decay) + 1e-12 * pool.pos).argsort(",
             ("tests/ops/test_eidetic.py",)),
    Mutation("mamba2 chunked scan: the skip term D x halved", "bmojo/ops/ssd.py",
             "        y = y + x[:, :T] * D[:, None].to(dtype)", "        y = y + x[:, :T] * D[:, None].to(dtype) / 2",
             ("tests/layers/test_special_cases.py",)),
    Mutation("attention: a query sees one key past itself", "bmojo/ops/attention.py",
             "        lo = max(0, i - W + 1, k_start)\n        keys.append(k[:, lo - k_start:i - k_start + 1])",
             "        lo = max(0, i - W + 1, k_start)\n        keys.append(k[:, lo - k_start:i - k_start + 2])",
             ("tests/ops/test_attention.py",)),
    Mutation("training: a resume keeps the log rows past its checkpoint", "bmojo/train/progress.py",
             "        if self.path is None or not self.path.exists():\n            return\n        lines",
             "        if True:\n            return\n        lines", ("tests/cli/test_run_safety.py",)),
    Mutation("training: a resume of a finished run trains and writes again", "bmojo/train/loop.py",
             "    if saved is not None and start >= cfg.steps:", "    if saved is not None and start > cfg.steps:",
             ("tests/cli/test_run_safety.py",)),
    Mutation("training: a folder holding a run is trained into", "bmojo/train/loop.py",
             "    if not found:\n        return\n    if not overwrite:",
             "    if True:\n        return\n    if not overwrite:",
             ("tests/cli/test_run_safety.py",)),
    Mutation("fused attention: flex used although a bias is given", "bmojo/ops/attention.py",
             "    if extra is None and not biased and flex.eligible(", "    if extra is None and flex.eligible(",
             ("tests/ops/test_flex.py",)),
    Mutation("inspect: a store attached when none was asked for", "bmojo/eval/inspect.py",
             "    with_store = with_store and any(", "    with_store = any(", ("tests/eval/test_inspect.py",)),
    Mutation("timing: the mean reported as the median", "bmojo/bench/timing.py",
             "    return statistics.median(times)", "    return statistics.mean(times)",
             ("tests/bench/test_bench.py",)),
    Mutation("generate: a negative temperature accepted", "bmojo/inference/sampling.py",
             "    if not (math.isfinite(temperature) and temperature >= 0):", "    if False:",
             ("tests/cli/test_bad_input.py",)),
]


def _copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith("benchmarks/results/"):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def check(m: Mutation, work: Path) -> dict:
    target = work / m.file
    original = target.read_text()
    hits = original.count(m.old)
    if hits != 1:
        return {"mutation": m.name, "error": f"the text to replace occurs {hits} times in {m.file}"}
    target.write_text(original.replace(m.old, m.new))
    try:
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1"}
        p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests],
                           cwd=work, env=env, capture_output=True, text=True, timeout=1800)
        failed = [line.split()[1] for line in p.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return {"mutation": m.name, "file": m.file, "tests": list(m.tests), "caught": p.returncode != 0,
                "failing": failed[:3], "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        target.write_text(original)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run the mutations whose name contains this text")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--out", default=None, help="the JSON report (default: benchmarks/results/mutation_check.json for "
                    "a full run; none with --only, so a partial run never replaces the full report)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only in m.name]
    if args.list or not chosen:
        for m in MUTATIONS:
            print(f"{m.name}  [{m.file}; {', '.join(m.tests)}]")
        return 0 if args.list else 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="bmojo-mutation-") as tmp:
        work = Path(tmp)
        _copy(work)
        for i, m in enumerate(chosen, 1):
            r = check(m, work)
            rows.append(r)
            status = "error: " + r["error"] if "error" in r else ("caught by " + ", ".join(r["failing"] or ["?"])
                                                                   if r["caught"] else "NOT CAUGHT")
            print(f"[{i}/{len(chosen)}] {m.name}: {status}", flush=True)
    out = args.out or (None if args.only else "benchmarks/results/mutation_check.json")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"rows": rows}, indent=1))
    missed = [r["mutation"] for r in rows if not r.get("caught")]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} planted bugs caught" + (f"; not: {missed}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
