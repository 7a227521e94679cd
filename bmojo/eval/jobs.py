"""Running a set of training jobs and reporting them, shared by `bmojo compare`, `bmojo lm-compare`, `bmojo eval`
and `bmojo bench`: a results folder that is never overwritten by accident, a pool of worker processes with a
progress line per running job, and plain-text tables."""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

from bmojo.config import ConfigError


def claim_results_folder(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds a comparison unless `overwrite` (then its partial rows are cleared; each run
    folder is replaced as its run starts)."""
    made = [p.name for p in (out / "results.json", out / "rows.jsonl", out / "runs") if p.exists()]
    if made and not overwrite:
        raise ConfigError(f"{out} already holds a comparison ({', '.join(made)}); choose another --out or pass "
                          "--overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").unlink(missing_ok=True)


def run_jobs(fn, jobs: list, workers: int, log, describe, watch: list[Path] | None = None,
             every: float = 30.0) -> list:
    """[fn(job) for job in jobs] in `workers` spawned processes (here if workers <= 1), logging a line per result
    as it finishes; results come back in the order they finish.  `fn` must be a module-level function.  With
    `watch` (each job's run folder), every `every` seconds a line per running job shows its progress, read from
    the metrics.jsonl the training loop writes there."""
    t0, rows = time.perf_counter(), []
    if workers <= 1:
        results = map(fn, jobs)
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_ignore_ctrl_c)
        results = pool.imap_unordered(fn, jobs)
    try:
        while len(rows) < len(jobs):
            if workers <= 1 or watch is None:
                row = next(results)
            else:
                try:
                    row = results.next(timeout=every)
                except mp.TimeoutError:
                    for line in running_lines(watch):
                        log(f"  ... {line}")
                    continue
            rows.append(row)
            log(f"  [{len(rows)}/{len(jobs)} {time.perf_counter() - t0:.0f}s] {describe(row)}")
    finally:
        if workers > 1:
            pool.terminate()
    return rows


def _ignore_ctrl_c() -> None:
    """In a worker: Ctrl-C is the parent's to handle (it stops the pool and exits 130)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def running_lines(folders: list[Path]) -> list[str]:
    """A progress line for each run folder whose run has started and not finished (no final checkpoint yet):
    step, loss, accuracy, the last evaluation and the time left at its pace so far."""
    lines = []
    for folder in folders:
        log = folder / "metrics.jsonl"
        if not log.exists() or (folder / "checkpoint").exists():
            continue
        last = {}  # the latest value of each field (training rows and evaluation rows alternate)
        for line in log.read_text().splitlines():
            try:
                last.update(json.loads(line))
            except ValueError:  # a line being written: read it next time
                break
        if not last:
            continue
        step, total, el = last.get("step", 0), last.get("steps"), last.get("elapsed_s")
        parts = [f"step {step}" + (f"/{total}" if total else "")]
        parts += [f"{k} {last[k]:.3f}" for k in ("loss", "acc", "eval_acc", "eval_ppl") if k in last]
        if total and el and step:
            parts.append(f"~{(total - step) * el / step / 60:.1f} min left")
        lines.append(f"{folder.name}: " + ", ".join(parts))
    return lines


def render_table(head: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    lines = [head] + rows
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    fmt = lambda l: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(l, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(l) for l in rows])
