"""Atomic WebDataset shards, per-shard reports, ``index.parquet`` and ``manifest.json``.

Layout of an output folder (local path or fsspec URL)::

    <prefix>-000000.tar            complete shards (written as .tar.tmp, fsynced, renamed)
    <prefix>-000000.meta.json      the shard's report: count, bytes, sha256, skips by reason, index rows
    index.parquet                  one row per sample (zstd), written by ``finalize``
    manifest.json                  written last: config + sha256, code and schema version, counts, shards

A shard counts as complete when its ``.tar`` exists: its report is written before the ``.tar.tmp`` is
renamed, so a complete shard always has one. Shard ``k`` of a generation run holds the samples whose
indices fall in ``[k * shard_size, (k + 1) * shard_size)`` (``ShardedOutput``), so a resumed run keeps
complete shards, removes ``.tmp`` leftovers and regenerates exactly the missing shards. Tar headers carry
no time, user or host, so equal records give byte-identical shards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import re
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.sample import Sample
from pipeline.schema import SCHEMA_VERSION, Label
from sinks.records import RecordWriter, encode_record, index_row
from sinks.store import Store, StoreError, describe_os_error

logger = logging.getLogger(__name__)

INDEX_SCHEMA = pa.schema(
    [
        # view: "global" or "local" (--views global,local); null in rows of shards written before views
        # existed
        ("key", pa.string()),
        ("index", pa.int64()),
        ("shard", pa.string()),
        ("view", pa.string()),
        ("hand_type", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("capture", pa.string()),
        ("frame", pa.string()),
        ("camera", pa.string()),
        ("caption", pa.string()),
        ("bbox_right", pa.list_(pa.float64())),
        ("bbox_left", pa.list_(pa.float64())),
        ("crop_box", pa.list_(pa.float64())),
        ("generator", pa.string()),
        ("alignment", pa.float64()),
        ("tries", pa.int64()),
    ]
)


def code_version() -> str:
    """``handgen <version>`` plus the git commit when the code runs from a checkout."""
    try:
        from importlib.metadata import version

        v = version("handgen")
    except Exception:  # not installed (running from a source tree)
        v = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"handgen {v} (git {commit})"
    except (OSError, subprocess.SubprocessError):
        return f"handgen {v}"


@dataclasses.dataclass
class ShardReport:
    """What one shard holds: name, shard index, record count, size in bytes, sha256, skips by reason,
    and its ``index.parquet`` rows."""

    name: str
    shard: int
    count: int = 0
    bytes: int = 0
    sha256: str = ""
    skipped: dict = dataclasses.field(default_factory=dict)
    rows: list = dataclasses.field(default_factory=list)
    run: dict | None = None  # the run that wrote it: config_sha256, run_tag, renderer, hand_model, source

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ShardReport:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


class _HashingWriter(io.RawIOBase):
    """File wrapper that counts what passes through and hashes it (sha256) on a background thread.

    hashlib releases the GIL for large buffers, so hashing overlaps the file writes; one worker thread keeps
    the chunks in order. ``hexdigest()`` waits for the hashing to finish.
    """

    def __init__(self, f) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-sha256")
        self._last = None

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, b) -> int:
        chunk = bytes(b)  # a copy: the caller reuses its buffer while the worker may still be hashing
        done = 0
        while done < len(chunk):  # write all of it, so exactly the hashed bytes reach the file
            n = self._f.write(chunk[done:] if done else chunk)
            done += len(chunk) - done if n is None else n
        self._last = self._pool.submit(self.sha.update, chunk)  # FIFO: chunks are hashed in order
        self.size += done
        return done

    def flush(self) -> None:
        self._f.flush()

    def hexdigest(self) -> str:
        self._pool.shutdown(wait=True)
        if self._last is not None:
            self._last.result()  # re-raise a hashing error, if any
        return self.sha.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        super().close()


class ShardWriter:
    """Writes one shard atomically; use as a context manager or call ``close()`` / ``abort()``.

    ``write(sample)`` encodes the record (``sinks.records``) and returns its ``Label``; ``skip(key, reason)``
    counts a sample that was not written. ``close()`` writes the report, then renames the shard into place.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        shard: int,
        lossless: bool = False,
        tmp_suffix: str = ".tmp",
        run: dict | None = None,
        before_commit=None,
    ) -> None:
        self.store, self.name, self.lossless = store, name, lossless
        self.report = ShardReport(name=name, shard=shard, run=dict(run) if run else None)
        self._tmp_suffix = tmp_suffix
        self._before_commit = before_commit  # called just before the shard is renamed into place; may raise
        self._skips: Counter = Counter()
        self._stack = contextlib.ExitStack()
        raw = self._stack.enter_context(store.open_write(name, name + tmp_suffix))
        self._hashing = _HashingWriter(raw)
        # tar writes 512-byte blocks: buffer them in C so the hashing wrapper sees 1 MB chunks
        self._buffered = io.BufferedWriter(self._hashing, buffer_size=1 << 20)
        self._tar = RecordWriter(self._buffered)  # WebDataset's layout, deterministic headers (sinks.records)
        self._closed = False

    def write(self, sample: Sample) -> Label:
        files, label = encode_record(sample, self.lossless)
        try:
            self._tar.write(files)
        except OSError as exc:
            self.abort()
            raise StoreError(describe_os_error(exc, self.store.path(self.name))) from exc
        self.report.count += 1
        self.report.rows.append(index_row(label, self.name))
        return label

    @property
    def bytes_written(self) -> int:
        """Bytes of the shard so far, including those still in the write buffer."""
        return self._buffered.tell()

    def add_skips(self, counts: dict) -> None:
        """Count skips (reason -> number) already logged elsewhere."""
        self._skips.update(counts)

    def skip(self, key: str, reason: str) -> None:
        self._skips[reason] += 1
        logger.warning("skipped %s: %s", key, reason)

    def close(self) -> ShardReport:
        if self._closed:
            return self.report
        try:
            self._tar.close()  # writes the tar end blocks; the file object stays open
            self._buffered.flush()
            self.report.bytes = self._hashing.size
            self.report.sha256 = self._hashing.hexdigest()
            self.report.skipped = dict(sorted(self._skips.items()))
            report = self.report.to_json()
            if report["run"] is None:
                del report["run"]
            meta = json.dumps(report, indent=1, sort_keys=True).encode()
            if self._before_commit is not None:
                self._before_commit()
            self.store.write_bytes(meta_name(self.name), meta, meta_name(self.name) + self._tmp_suffix)
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            self._closed = True
            raise
        self._stack.close()  # flush, fsync, rename .tar.tmp -> .tar
        self._closed = True
        logger.info("wrote %s: %d records, %d bytes", self.name, self.report.count, self.report.bytes)
        return self.report

    def abort(self) -> None:
        """Drop the partial shard (its .tmp is removed; nothing complete is touched)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._tar.close()
        self._hashing._pool.shutdown(wait=True)
        err = RuntimeError("shard aborted")
        with contextlib.suppress(Exception):
            self._stack.__exit__(RuntimeError, err, None)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def meta_name(shard_name: str) -> str:
    return re.sub(r"\.tar$", ".meta.json", shard_name)


class ShardedOutput:
    """An output folder of numbered shards with resume and finalisation (see module doc)."""

    def __init__(self, out: str, prefix: str = "hands", lossless: bool = False) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
            raise ValueError(f"shard prefix must be letters, digits, '_', '.', '-', got {prefix!r}")
        self.store = Store(out)
        self.prefix, self.lossless = prefix, lossless

    def shard_name(self, k: int) -> str:
        return f"{self.prefix}-{k:06d}.tar"

    def prepare(self, resume: bool) -> None:
        """Create the folder; without ``resume`` refuse a folder that already holds shards or a manifest of
        this prefix. Leftover ``.tmp`` files are not touched here: another worker may be writing them (a
        shard's leftovers are removed by the worker that claims it, ``sinks.run.RunFolder.writing``)."""
        self.store.makedirs()
        names = self.store.listdir()
        ours = [n for n in names if n.startswith(self.prefix + "-") and n.endswith(".tar")]
        if not resume and (ours or "manifest.json" in names):
            raise StoreError(
                f"{self.store.url} already holds {len(ours)} shards of '{self.prefix}' or a manifest; "
                "use --resume to continue that run or choose an empty folder"
            )

    def is_complete(self, k: int) -> bool:
        name = self.shard_name(k)
        return self.store.exists(name) and self.store.exists(meta_name(name))

    def report(self, k: int) -> ShardReport:
        name = self.shard_name(k)
        return ShardReport.from_json(json.loads(self.store.read_bytes(meta_name(name))))

    def shard(
        self, k: int, tmp_suffix: str = ".tmp", run: dict | None = None, before_commit=None
    ) -> ShardWriter:
        """Writer for shard ``k`` through ``<name><tmp_suffix>`` (an incomplete file of that name is
        replaced). ``run`` goes into the shard's report; ``before_commit()`` runs before the rename and may
        abort it."""
        self.store.remove(self.shard_name(k) + tmp_suffix)
        return ShardWriter(self.store, self.shard_name(k), k, self.lossless, tmp_suffix, run, before_commit)

    def finalize(
        self, shards: list[int], config: dict, config_sha256: str, extra: dict | None = None
    ) -> dict:
        """Write ``index.parquet`` then ``manifest.json`` for ``shards`` (all must be complete)."""
        missing = [k for k in shards if not self.is_complete(k)]
        if missing:
            raise StoreError(f"cannot finalise {self.store.url}: shards {missing[:10]} are not complete")
        reports = [self.report(k) for k in sorted(shards)]
        rows = [r for rep in reports for r in rep.rows]
        keys = [r["key"] for r in rows]
        if len(set(keys)) != len(keys):
            dup = [k for k, n in Counter(keys).items() if n > 1][:5]
            raise StoreError(f"duplicate keys across shards: {dup}")
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), buf, compression="zstd")
        index_bytes = buf.getvalue()
        self.store.write_bytes("index.parquet", index_bytes)
        skipped: Counter = Counter()
        for rep in reports:
            skipped.update(rep.skipped)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "code_version": code_version(),
            "config": config,
            "config_sha256": config_sha256,
            "counts": {"written": len(rows), "skipped": dict(sorted(skipped.items()))},
            "shards": [
                {"name": r.name, "shard": r.shard, "count": r.count, "bytes": r.bytes, "sha256": r.sha256}
                for r in reports
            ],
            "index": {
                "name": "index.parquet",
                "rows": len(rows),
                "sha256": hashlib.sha256(index_bytes).hexdigest(),
            },
            **(extra or {}),
        }
        self.store.write_bytes("manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
        logger.info("wrote manifest: %d records in %d shards", len(rows), len(reports))
        return manifest
