"""Content digests of data and weight files, cached: what a data signature, a checkpoint's fingerprint and the
pipeline's `preflight` stage are made of.

A file's digest is `<size>:<sha256 of its bytes>` (the first 32 hex digits). Hashing every image of a paper-scale
split takes minutes, so digests are kept in a SQLite cache (`$LPTLIB_CACHE/file-digests.sqlite`, default
`~/.cache/lptlib/`) keyed by the file's absolute path and checked against its size, modification time (ns) and inode:
a file replaced or rewritten in place gets a new stat and is hashed again; an unchanged one costs one `stat`.
Uncached files are hashed on a few threads (hashlib releases the GIL). Costs: docs/benchmarks.md.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHUNK = 1 << 20


def cache_path() -> Path:
    """The SQLite file holding cached digests."""
    return Path(os.environ.get("LPTLIB_CACHE") or "~/.cache/lptlib").expanduser() / "file-digests.sqlite"


def hash_file(path: str | os.PathLike) -> str:
    """`<size>:<sha256[:32]>` of the file's bytes, uncached."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return f"{size}:{h.hexdigest()[:32]}"


def _connect() -> sqlite3.Connection | None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=60)
        db.execute(
            "CREATE TABLE IF NOT EXISTS digest (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
            "inode INTEGER, digest TEXT)"
        )
        return db
    except sqlite3.Error:  # a read-only home or a damaged cache: hash without one
        return None


def file_digests(paths: Sequence[str | os.PathLike], threads: int = 4) -> list[str]:
    """The digest of every file in `paths` (same order), from the cache where the file's stat is unchanged.

    Raises FileNotFoundError naming the first missing file."""
    files = [os.path.abspath(p) for p in paths]
    stats = []
    for f in files:
        try:
            st = os.stat(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{f}: no such file (a data or weight file the run reads)") from None
        stats.append((st.st_size, st.st_mtime_ns, st.st_ino))
    db = _connect()
    known: dict[str, tuple] = {}
    if db is not None:
        for i in range(0, len(files), 500):
            part = files[i : i + 500]
            rows = db.execute(
                f"SELECT path, size, mtime_ns, inode, digest FROM digest WHERE path IN ({','.join('?' * len(part))})",
                part,
            )
            known.update({r[0]: r[1:] for r in rows})
    out: list[str | None] = [None] * len(files)
    todo = []
    for i, (f, st) in enumerate(zip(files, stats, strict=True)):
        row = known.get(f)
        if row is not None and tuple(row[:3]) == st:
            out[i] = row[3]
        else:
            todo.append(i)
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(todo)))) as ex:
            for i, digest in zip(todo, ex.map(lambda j: hash_file(files[j]), todo), strict=True):
                out[i] = digest
        if db is not None:
            try:
                with db:
                    db.executemany(
                        "INSERT OR REPLACE INTO digest VALUES (?, ?, ?, ?, ?)",
                        [(files[i], *stats[i], out[i]) for i in todo],
                    )
            except sqlite3.Error:
                pass
    if db is not None:
        db.close()
    return out  # type: ignore[return-value]


def files_digest(paths: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> str:
    """One digest of several files' names and contents (sha256[:16]): `names` (default: the paths) paired with
    each file's content digest."""
    names = [str(p) for p in paths] if names is None else list(names)
    h = hashlib.sha256()
    for name, digest in zip(names, file_digests(paths), strict=True):
        h.update(f"{name}\t{digest}\n".encode())
    return h.hexdigest()[:16]


def benchmark(folder: Path, files: int, size: int, threads: int = 4) -> dict[str, float]:
    """Seconds to digest `files` files of `size` bytes in `folder` (created once, random bytes): with an empty
    cache, with every digest cached, and with 1% of the files rewritten in place."""
    import shutil
    import time

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i // 1000:03d}" / f"{i:06d}.jpg" for i in range(files)]
    for p in paths:
        if not p.is_file() or p.stat().st_size != size:
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(os.urandom(size))
    cache = folder.with_name(folder.name + "-cache")
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["LPTLIB_CACHE"] = str(cache)
    out = {}
    for name in ("uncached", "cached", "1% changed"):
        if name == "1% changed":
            for p in paths[::100]:
                p.write_bytes(os.urandom(size))
        start = time.perf_counter()
        file_digests(paths, threads=threads)
        out[name] = time.perf_counter() - start
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m lptlib.data.digest",
        description="Benchmark the content digests of a paper-scale-sized split (docs/benchmarks.md).",
    )
    ap.add_argument("folder", type=Path, help="where to create the files (reused when they exist)")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=110_000, help="bytes per file (ImageNet-LT's JPEGs: about 110 kB)")
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    result = benchmark(args.folder, args.files, args.size, args.threads)
    total = args.files * args.size / 1e9
    print(
        f"{args.files:,} files of {args.size:,} bytes ({total:.1f} GB), {args.threads} threads, {os.cpu_count()} CPUs"
    )
    for name, seconds in result.items():
        print(f"  {name:<11} {seconds:8.2f} s   {seconds * 100_000 / args.files:8.2f} s per 100k files")
