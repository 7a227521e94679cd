"""Streaming `bmojo data prepare` at scale: generate a text corpus of a given size (files of 1 MB of random words
from a 5,000-word vocabulary, with line breaks), prepare it in a fresh process under `/usr/bin/time -v`, and
record the peak RSS and the throughput.

    python benchmarks/prepare_scale.py --mb 2048 --tokenizer byte --out benchmarks/results/prepare_scale/byte_2gb.json
    python benchmarks/prepare_scale.py --mb 256 --tokenizer bpe --out benchmarks/results/prepare_scale/bpe_256mb.json

The generated corpus and the prepared one go to --work (default /tmp/bmojo_prepare_scale) and are removed after.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def generate(folder: Path, mb: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    vocab = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(5000)]
    words = np.array([w.encode() for w in vocab], dtype=object)
    folder.mkdir(parents=True)
    total = 0
    for i in range(mb):
        idx = rng.integers(0, len(vocab), 190_000)
        lines = [b" ".join(words[idx[j:j + 12]]) for j in range(0, len(idx), 12)]
        data = b"\n".join(lines)[: 1 << 20]
        (folder / f"part{i // 1000:03d}" / f"{i:05d}.txt").parent.mkdir(exist_ok=True)
        (folder / f"part{i // 1000:03d}" / f"{i:05d}.txt").write_bytes(data)
        total += len(data)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=2048, help="corpus size in MiB (default: 2048)")
    ap.add_argument("--tokenizer", default="byte", help="byte or bpe (default: byte)")
    ap.add_argument("--workers", type=int, default=None, help="passed to prepare (default: one per core)")
    ap.add_argument("--work", default="/tmp/bmojo_prepare_scale")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    n = generate(work / "corpus", a.mb)
    print(f"generated {n / 1e6:,.0f} MB in {time.perf_counter() - t0:.0f}s", flush=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "bmojo", "data", "prepare", "--corpus", str(work / "corpus"),
           "--data", str(work / "data"), "--tokenizer", a.tokenizer, "--vocab-size", "4096"]
    if a.workers:
        cmd += ["--workers", str(a.workers)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(done.stdout[-2000:], done.stderr[-3000:], sep="\n")
    if done.returncode != 0:
        raise SystemExit(f"prepare failed ({done.returncode})")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    rate = re.search(r"tokenized ([\d,.]+) MB in ([\d.]+)s \(([\d.]+) MB/s\)", done.stdout)
    row = {"corpus_bytes": n, "tokenizer": a.tokenizer, "workers": a.workers, "peak_rss_bytes": peak_kb * 1024,
           "wall_s": wall, "tokenize_mb_per_s": float(rate.group(3)) if rate else None,
           "overall_mb_per_s": n / 1e6 / wall, "command": " ".join(cmd[2:]),
           "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
