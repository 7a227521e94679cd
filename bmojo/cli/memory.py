"""`bmojo memory`: look at or delete a long-term store (the folder `generate` and `eval ppl` take as --storage).

A store holds, per B'MOJO layer, the keys, values and positions of every token that left the layer's eidetic
memory, and (after `bmojo generate --storage DIR`) the decode state, so the next call continues the same stream.
"""
from __future__ import annotations

import argparse
import json
import sys

from bmojo.memory import StoreConfig, clear, describe, verify
from bmojo.memory.store import Store


def add_store_args(p) -> None:
    """--storage and its search options, for the commands that can use a store."""
    g = p.add_argument_group("long-term store (bmojo.memory)")
    g.add_argument("--storage", default=None, metavar="DIR",
                   help="a store folder: tokens evicted from the eidetic memory are kept there and retrieved by later "
                        "queries; created if missing")
    g.add_argument("--store-topk", type=int, default=StoreConfig.topk, help="entries retrieved per query and head")
    g.add_argument("--store-search", default=StoreConfig.search, choices=["exact", "ann", "auto"],
                   help="exact search (default), an approximate index (faiss HNSW: faster past ~64k entries, but "
                        "on a trained model's keys it can miss the rare entry a recall needs), or ann above "
                        "--store-ann-threshold entries")
    g.add_argument("--store-ann-threshold", type=int, default=StoreConfig.ann_threshold,
                   help="entries per layer and sequence above which `auto` switches to the approximate index")
    g.add_argument("--store-admit", default=StoreConfig.admit, choices=["evicted", "memory"],
                   help="what a layer stores: every token that leaves its eidetic pool (default), or only the "
                        "entries pushed out of its memory, i.e. once chosen by the innovation test (fewer entries, "
                        "a faster search)")


def store_config(args) -> StoreConfig:
    return StoreConfig(topk=args.store_topk, search=args.store_search, ann_threshold=args.store_ann_threshold,
                       admit=args.store_admit)


def open_store(args, model, rows: int = 1, folder=None) -> Store:
    """The store named by --storage (or `folder`) for `model`, reporting what a crash recovery dropped."""
    store = Store.for_model(folder or args.storage, model, rows=rows, cfg=store_config(args))
    report_recovery(store)
    return store


def report_recovery(store: Store) -> None:
    for r in store.recovered:
        what = f"{r['dropped_entries']} entries of layer {r['layer']}" if "layer" in r else f"{r['dropped_bytes']} bytes"
        why = r.get("reason", "the write in flight when an earlier run stopped")
        kept = f"; the dropped bytes are kept in {r['kept_in']}" if r.get("kept_in") else ""
        print(f"store {store.folder}: dropped {what} from {r['file']} ({why}){kept}", file=sys.stderr)


def add_parser(sub) -> None:
    p = sub.add_parser("memory", help="inspect or clear a long-term store folder", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    msub = p.add_subparsers(dest="memory_command", metavar="ACTION", required=True)
    i = msub.add_parser("info", help="entries per layer and bytes on disk of a store, after checking every record's "
                        "CRC (exit 1 if damaged; nothing is changed)")
    i.add_argument("folder", help="a store folder (the --storage of generate or eval ppl)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=run_info)
    c = msub.add_parser("clear", help="delete a store's files (the folder must be one; files of yours in it stay)")
    c.add_argument("folder", help="a store folder; only the store's own files are deleted, anything else in it is "
                                  "left; a folder that is not a bmojo store is refused")
    c.set_defaults(func=run_clear)


def run_info(args) -> int:
    """Entries and bytes, after checking every CRC (nothing is changed): exit 1 when the store is damaged."""
    d = describe(args.folder)
    d["damage"] = verify(args.folder)
    if args.json:
        print(json.dumps(d, indent=1))
        return 1 if d["damage"] else 0
    print(f"store {d['folder']}: {d['rows']} sequence(s), {d['disk_bytes'] / 2**20:.2f} MiB on disk, "
          f"session {'saved' if d['has_session'] else 'none'}")
    for layer, n in d["entries"].items():
        print(f"  layer {layer}: {n} entries")
    for r in d["damage"]:
        what = f"{r['dropped_entries']} entries" if "dropped_entries" in r else f"{r['dropped_bytes']} bytes"
        print(f"  DAMAGED: {r['file']}: {what}: {r['reason']}")
    if d["damage"]:
        print(f"store {d['folder']}: damaged; opening it (generate, eval) moves the damaged parts to "
              f"{d['folder']}/dropped/ and keeps every intact record", file=sys.stderr)
        return 1
    print("  every record and commit checks out")
    return 0


def run_clear(args) -> int:
    left = clear(args.folder)
    print(f"cleared {args.folder}" + (f" (left what is not the store's: {', '.join(p.name for p in left)})"
                                      if left else ""))
    return 0
