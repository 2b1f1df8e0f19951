"""One run folder: its identity (``run.json``), shard claims with leases, and the single finalisation.

``run.json`` is written first, with an exclusive create, when a run folder is opened: the run's identity
config (``RunConfig.identity``), its sha256, the run tag, the code and schema versions and the shard layout.
Every later opening compares its own identity with it: a different config is refused with one line naming
the differing fields; the same config joins (a second worker, a fan-out child) or resumes the run.

Shard ownership. A worker writes shard ``k`` only while it holds the shard's claim:

* a claim is a small JSON file ``<shard>.claim<g>`` (owner id, host, pid, lease expiry as Unix time) created
  with an exclusive create (``Store.create_exclusive``: ``O_EXCL`` locally, a conditional PUT on object
  stores), so exactly one worker wins generation ``g``;
* the holder renews the lease from a heartbeat thread every ``lease / 4`` seconds;
* a claim whose lease has expired (its worker died), or whose worker process on this same host is gone, is
  taken over by creating generation ``g + 1``; again
  exactly one worker wins, and the old holder, if it still lives, sees the newer generation at its next
  heartbeat and abandons its partial file;
* each writer writes under its own temporary name (``<shard>.<owner>.tmp``), so two writers never share a
  file, and a worker removes only temporary files of a shard whose claim it holds;
* a complete shard (``.tar`` plus its ``.meta.json`` report) is final: claims are removed after it lands.

Finalisation (``index.parquet`` then ``manifest.json``) happens once, by the run that owns the whole shard
range, under the claim of ``manifest.json``. It loads no models: everything it records comes from
``run.json`` and the shard reports.

Leases compare Unix times across machines: hosts sharing a run folder need clocks within a few seconds of
each other (NTP); the default lease (``HANDGEN_LEASE_SECONDS``, 120 s) leaves a wide margin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from pipeline.config import RunConfig, identity_diff
from pipeline.errors import HandgenError, TransientError
from pipeline.schema import SCHEMA_VERSION
from sinks.store import Store, StoreError
from sinks.webdataset_sink import ShardedOutput, ShardReport, code_version, meta_name

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
MANIFEST = "manifest.json"
DEFAULT_LEASE_SECONDS = 120.0


class RunMismatchError(HandgenError):
    """The folder holds another run (different config, foreign shards, or no ``run.json``)."""


class ClaimLostError(TransientError):
    """This worker's claim on a shard was taken over (its lease expired); the shard is left to the new
    owner."""


def lease_seconds() -> float:
    """The claim lease in seconds: ``HANDGEN_LEASE_SECONDS`` or 120."""
    try:
        v = float(os.environ.get("HANDGEN_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))
    except ValueError:
        raise HandgenError(
            f"HANDGEN_LEASE_SECONDS must be a number of seconds, got {os.environ['HANDGEN_LEASE_SECONDS']!r}"
        ) from None
    if v <= 0:
        raise HandgenError(f"HANDGEN_LEASE_SECONDS must be > 0, got {v}")
    return v


def new_owner_id() -> str:
    """A fresh worker id: 12 hex digits, unique across hosts and processes."""
    return uuid.uuid4().hex[:12]


_PROCESS_OWNER: dict[int, str] = {}


def process_owner() -> str:
    """This process's worker id (a new one after a fork)."""
    pid = os.getpid()
    if pid not in _PROCESS_OWNER:
        _PROCESS_OWNER.clear()
        _PROCESS_OWNER[pid] = new_owner_id()
    return _PROCESS_OWNER[pid]


def run_record(cfg: RunConfig) -> dict:
    """The content of ``run.json`` for ``cfg``."""
    return {
        "schema_version": SCHEMA_VERSION,
        "code_version": code_version(),
        "run_tag": cfg.effective_run_tag(),
        "config": cfg.identity(),
        "config_sha256": cfg.config_sha256(),
        "shard_prefix": cfg.shard_prefix,
        "shard_size": cfg.shard_size,
        "num_shards": cfg.num_shards,
        "samples": cfg.samples,
    }


class Claim:
    """A held claim on one name (a shard, or the manifest); renews its lease on a heartbeat thread.

    ``lost`` turns true when another worker has taken the claim over (after this one's lease expired);
    ``check()`` then raises ``ClaimLostError``.
    """

    def __init__(self, store: Store, name: str, gen: int, owner: str, lease: float) -> None:
        self.store, self.name, self.gen, self.owner, self.lease = store, name, gen, owner, lease
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"claim-{name}", daemon=True)
        self._thread.start()

    @property
    def file(self) -> str:
        return claim_file(self.name, self.gen)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease / 4):
            try:
                if self.store.exists(claim_file(self.name, self.gen + 1)):
                    self.lost = True
                    logger.warning("claim on %s was taken over by another worker", self.name)
                    return
                self.store.write_bytes(
                    self.file, _claim_payload(self.owner, self.lease), tmp_name=self._tmp()
                )
            except Exception as exc:  # a missed heartbeat is not fatal while the lease lasts
                logger.debug("heartbeat for %s failed: %s", self.name, exc)

    def _tmp(self) -> str:
        return f"{self.file}.{self.owner}.tmp"

    def check(self) -> None:
        """Raise ``ClaimLostError`` when the claim was taken over."""
        if self.lost:
            raise ClaimLostError(f"the claim on {self.name} was taken over by another worker")

    def release(self) -> None:
        """Stop the heartbeat and remove this claim's files (and older generations)."""
        self._stop.set()
        self._thread.join(timeout=5)
        if not self.lost:
            for g in range(self.gen, -1, -1):
                with contextlib.suppress(OSError):
                    self.store.remove(claim_file(self.name, g))


def claim_file(name: str, gen: int) -> str:
    return f"{name}.claim{gen}"


def _claim_payload(owner: str, lease: float) -> bytes:
    return json.dumps(
        {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "expires": time.time() + lease}
    ).encode()


def try_claim(store: Store, name: str, owner: str, lease: float) -> Claim | None:
    """Claim ``name`` for ``owner``: a ``Claim`` when this worker now holds it, None when another worker holds
    a live lease on it."""
    gen = 0
    while True:
        if store.create_exclusive(claim_file(name, gen), _claim_payload(owner, lease)):
            for g in range(gen):  # older generations belong to workers whose leases expired
                with contextlib.suppress(OSError):
                    store.remove(claim_file(name, g))
            return Claim(store, name, gen, owner, lease)
        while store.exists(claim_file(name, gen + 1)):
            gen += 1
        try:
            held = json.loads(store.read_bytes(claim_file(name, gen)))
            expires = float(held["expires"])
        except FileNotFoundError:
            gen = 0  # released meanwhile: start over
            continue
        except (OSError, ValueError, KeyError, TypeError):
            expires = 0.0  # unreadable claim (its writer died mid-write?): treat as expired
            held = {}
        if held.get("owner") == owner:
            gen += 1  # our own stale claim (a previous attempt of this worker): supersede it
            continue
        if expires > time.time() and not _dead_here(held):
            return None
        logger.info("claim on %s by %s expired; taking it over", name, held.get("owner", "?"))
        gen += 1


def _dead_here(held: dict) -> bool:
    """True when the claim's worker ran on this host and its process is gone (its lease need not run out)."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def live_claims(store: Store, names: list[str]) -> int:
    """How many of the folder's ``names`` are claim files with an unexpired lease."""
    n = 0
    now = time.time()
    for name in names:
        if ".claim" not in name or name.endswith(".tmp"):
            continue
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            held = json.loads(store.read_bytes(name))
            if float(held["expires"]) > now and not _dead_here(held):
                n += 1
    return n


class RunFolder:
    """The output folder of one run: identity, claims, shard writing and finalisation (see module doc)."""

    def __init__(self, cfg: RunConfig, owner: str | None = None, lease: float | None = None) -> None:
        self.cfg = cfg
        self.output = ShardedOutput(cfg.out, prefix=cfg.shard_prefix, lossless=cfg.lossless)
        self.store = self.output.store
        self.owner = owner or process_owner()
        self.lease = lease_seconds() if lease is None else lease
        self.record = run_record(cfg)
        self._stages_checked = False

    # -- identity --------------------------------------------------------------------------------------------
    def open(self, resume: bool) -> str:
        """Create the folder and ``run.json``, or check the existing one. Returns "new", "joined" (a run in
        progress with live claims), "resumed" or "finished" (its manifest exists). Raises ``RunMismatchError``
        for another run's folder, and ``StoreError`` without ``resume`` for a folder with an unfinished run
        that nobody is writing (continue it with --resume)."""
        self.store.makedirs()
        names = self.store.listdir()
        ours = [n for n in names if n.startswith(self.cfg.shard_prefix + "-") and n.endswith(".tar")]
        if RUN_FILE not in names and (ours or MANIFEST in names):
            raise RunMismatchError(
                f"{self.store.url} holds shards but no {RUN_FILE} "
                "(written by another tool or an older handgen); choose an empty folder"
            )
        data = json.dumps(self.record, indent=1, sort_keys=True).encode() + b"\n"
        if self.store.create_exclusive(RUN_FILE, data):
            logger.info("new run %s in %s", self.record["run_tag"], self.store.url)
            return "new"
        existing = self.read_run_json()
        self._check_identity(existing)
        if MANIFEST in names:
            if not resume:
                raise StoreError(
                    f"{self.store.url} already holds the finished run {existing['run_tag']}; "
                    "use --resume to check it or choose an empty folder"
                )
            return "finished"
        if resume:
            return "resumed"
        if ours and not live_claims(self.store, names):
            raise StoreError(
                f"{self.store.url} holds an unfinished run ({len(ours)} shards written); "
                "continue with --resume"
            )
        logger.info("joining run %s in progress in %s", existing["run_tag"], self.store.url)
        return "joined"

    def read_run_json(self) -> dict:
        try:
            d = json.loads(self.store.read_bytes(RUN_FILE))
            if not isinstance(d, dict) or not isinstance(d.get("config"), dict):
                raise ValueError("not a run record")
            return d
        except (OSError, ValueError) as exc:
            raise RunMismatchError(f"{self.store.path(RUN_FILE)} is unreadable: {exc}") from exc

    def _check_identity(self, existing: dict) -> None:
        diff = identity_diff(existing.get("config", {}), self.record["config"])
        if diff:
            old, new = existing.get("config", {}), self.record["config"]
            parts = [f"{k} ({_get(old, k)!r} there, {_get(new, k)!r} here)" for k in diff[:6]]
            raise RunMismatchError(
                f"{self.store.url} holds another run ({existing.get('run_tag')}): config differs in "
                + ", ".join(parts)
                + ("" if len(diff) <= 6 else f" and {len(diff) - 6} more")
                + "; choose another --out"
            )
        if existing.get("code_version") != self.record["code_version"]:
            logger.warning(
                "run %s was started by %s; continuing with %s",
                existing.get("run_tag"),
                existing.get("code_version"),
                self.record["code_version"],
            )

    def check_stages(self, run_info: dict) -> None:
        """Refuse to add shards made by other stages than the run's complete shards were: ``run_info`` is
        what this process's shard reports would record (``GenerationPipeline.run_info``: renderer, hand
        model, source, generator name and version); it is compared with the first complete shard's report,
        once per folder. ``finalize`` would refuse the mixed run only after every shard is written (it checks
        that all reports agree); this says so before anything is generated (e.g. a resume after an upgrade
        that changed the generator's version). Raises ``RunMismatchError`` (one line)."""
        if self._stages_checked:
            return
        run_info = json.loads(json.dumps(run_info))  # as a report reads back (tuples are lists in JSON)
        names = set(self.store.listdir())  # one listing, not a lookup per shard (a run may have thousands)
        done = (k for k in range(self.cfg.num_shards) if self._complete_in(names, k))
        k = next(done, None)
        if k is not None:
            rep = self.report(k)
            key = _stage_conflict(rep.run, run_info)
            if key is not None:
                theirs, ours = rep.run[key], run_info[key]
                where = self.store.path(rep.name)
                pin = _standin_pin(key, theirs, ours)
                if pin:
                    raise RunMismatchError(f"{where} was written with {pin}, or choose another --out")
                changed = sorted(f for f in set(theirs) | set(ours) if theirs.get(f) != ours.get(f))
                detail = ", ".join(f"{f} {theirs.get(f)!r} there, {ours.get(f)!r} here" for f in changed[:3])
                raise RunMismatchError(
                    f"{where} was written with another {key} ({detail}); finish the "
                    "run with the stages (and code version) that started it, or choose another --out"
                )
        self._stages_checked = True

    def _complete_in(self, names: set, k: int) -> bool:
        """Whether shard ``k`` is complete (its tar and its report) in the listing ``names``."""
        name = self.output.shard_name(k)
        return name in names and meta_name(name) in names

    # -- shards ----------------------------------------------------------------------------------------------
    def is_complete(self, k: int) -> bool:
        return self.output.is_complete(k)

    def report(self, k: int) -> ShardReport:
        """The report of complete shard ``k``; refuses a shard written by another run."""
        rep = self.output.report(k)
        sha = (rep.run or {}).get("config_sha256")
        if sha != self.record["config_sha256"]:
            raise RunMismatchError(
                f"{self.store.path(rep.name)} belongs to another run (config sha256 {str(sha)[:12]}, "
                f"this run {self.record['config_sha256'][:12]}); choose another --out"
            )
        return rep

    def claim(self, name: str) -> Claim | None:
        return try_claim(self.store, name, self.owner, self.lease)

    @contextlib.contextmanager
    def writing(self, k: int, claim: Claim | None = None) -> Iterator[tuple[Claim, object] | None]:
        """Claim shard ``k`` (or take over ``claim``, already held on it) and yield ``(claim, writer)``;
        yields None when another worker holds it or it is already complete. Leftover temporary files of the
        shard are removed once the claim is held. The claim is released when the block ends."""
        name = self.output.shard_name(k)
        claim = claim or self.claim(name)
        if claim is None:
            yield None
            return
        try:
            if self.is_complete(k):
                yield None
                return
            # this shard's temporary files, any owner's, and those of its claim files (``create_exclusive``
            # writes ``.<claim>.<random>.tmp`` first: a worker killed there leaves one behind)
            leftovers = (name + ".", meta_name(name) + ".", f".{name}.claim")
            for n in self.store.listdir():
                if n.endswith(".tmp") and n.startswith(leftovers):
                    logger.info("removing leftover %s", n)
                    with contextlib.suppress(OSError):
                        self.store.remove(n)
            writer = self.output.shard(
                k,
                tmp_suffix=f".{self.owner}.tmp",
                run={"config_sha256": self.record["config_sha256"], "run_tag": self.record["run_tag"]},
                before_commit=claim.check,
            )
            yield claim, writer
        finally:
            claim.release()

    # -- finalisation ----------------------------------------------------------------------------------------
    def finished(self) -> bool:
        return self.store.exists(MANIFEST)

    def finalize(self, extra: dict | None = None) -> dict | None:
        """Write ``index.parquet`` and ``manifest.json`` once. Returns the manifest, or None when another
        worker is finalising (its claim is live)."""
        if self.finished():
            return json.loads(self.store.read_bytes(MANIFEST))
        claim = self.claim(MANIFEST)
        if claim is None:
            return None
        try:
            if self.finished():
                return json.loads(self.store.read_bytes(MANIFEST))
            shards = list(range(self.cfg.num_shards))
            reports = [self.report(k) for k in shards]
            run_info = _common_run_info(reports)
            extras = {"run_tag": self.record["run_tag"], **run_info, **(extra or {})}
            manifest = self.output.finalize(
                shards, self.cfg.model_dump(mode="json"), self.record["config_sha256"], extras
            )
            self._remove_claim_leftovers()
            return manifest
        finally:
            claim.release()

    def _remove_claim_leftovers(self) -> None:
        """Remove the temporary files that workers killed while claiming a shard left behind
        (``.<shard>.claim<g>.<random>.tmp``; also the manifest's, whose claim this worker holds): once every
        shard is complete nobody claims a shard again."""
        heads = (f".{self.cfg.shard_prefix}-", f".{MANIFEST}.claim")
        for n in self.store.listdir():
            if n.startswith(heads) and ".claim" in n and n.endswith(".tmp"):
                logger.info("removing leftover %s", n)
                with contextlib.suppress(OSError):
                    self.store.remove(n)


STAGE_RECORDS = ("renderer", "hand_model", "source", "generator", "props")
"""The stage records that every shard report of a run must agree on (``GenerationPipeline.run_info``); a
record that one side lacks (a run written before it existed) is not compared."""


def _common_run_info(reports: list[ShardReport]) -> dict:
    """The renderer / hand model / source records the shard reports agree on (each worker records its own)."""
    info: dict = {}
    for rep in reports:
        run = rep.run or {}
        k = _stage_conflict(run, info)
        if k is not None:
            raise RunMismatchError(
                f"{rep.name} was written with another {k} ({run[k]}) than the other shards ({info[k]})"
            )
        info.update({k: run[k] for k in STAGE_RECORDS if run.get(k) is not None})
    return info


def _stage_conflict(a: dict | None, b: dict | None) -> str | None:
    """The first of ``STAGE_RECORDS`` that two shard reports' run records (or a process's ``run_info``) both
    hold and hold differently, or None."""
    a, b = a or {}, b or {}
    for k in STAGE_RECORDS:
        if a.get(k) is not None and b.get(k) is not None and a[k] != b[k]:
            return k
    return None


def _standin_pin(key: str, theirs: dict, ours: dict) -> str | None:
    """For a run begun with another version of the embedded stand-in than this process's hand model: which
    version, and how to finish the run with it; None for any other difference."""
    if key != "hand_model" or theirs.get("name") != "standin":
        return None
    from pipeline.hand_model import standin_version_of  # only on this error path: it builds the stand-ins

    version = standin_version_of(theirs.get("sha256"))
    if version is None:
        return None
    here = standin_version_of(ours.get("sha256"))
    here = f"version {here}" if here is not None else f"the {ours.get('name')} hand model"
    return (
        f"stand-in version {version} (this process uses {here}); finish the run with --standin-version "
        f"{version} (hand_model.standin_version in a config file)"
    )


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def wait_for(
    pending: Callable[[], list[int]],
    take: Callable[[int], bool],
    poll: float = 2.0,
    timeout: float | None = None,
) -> None:
    """Wait until ``pending()`` is empty; each poll calls ``take(k)`` for every pending shard, so a shard
    whose worker died (lease expired) is written here. ``take`` returns True when it wrote the shard."""
    t0 = time.monotonic()
    while True:
        todo = pending()
        if not todo:
            return
        if not any([take(k) for k in todo]):
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise TransientError(f"timed out waiting for shards {todo[:10]} held by other workers")
            time.sleep(poll)
