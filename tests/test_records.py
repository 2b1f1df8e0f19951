"""The record format's one owner, ``sinks.records``: the tar writer, the record iterator and the offset index
agree with each other and with what ``tarfile`` sees; truncated shards are one-line errors; no other product
module opens tars."""

import ast
import io
import pickle
import tarfile
from pathlib import Path

import pytest

from sinks import reader, records
from sinks.records import (
    RecordIndex,
    RecordWriter,
    ShardChecksums,
    ShardReadError,
    iter_records,
    resolve_shards,
)
from tests.samples import write_run

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("pipeline", "renderers", "captioning", "generators", "sinks", "evaluation", "flows")


@pytest.fixture(scope="module")
def run(tmp_path_factory, hand_model):
    return write_run(tmp_path_factory.mktemp("records"), hand_model, n=5, shard_size=3, run_tag="r")


@pytest.fixture(scope="module")
def shard(run):
    return run / "hands-000000.tar"


def _tar_members(path) -> list[tuple[str, int, int, bytes]]:
    """(name, offset_data, size, data) of every member, straight from ``tarfile``."""
    with tarfile.open(path) as tf:
        return [(m.name, m.offset_data, m.size, tf.extractfile(m).read()) for m in tf]


def _truncations(shard: Path) -> dict[str, int]:
    """Where to cut the shard: inside a member's data, on a header boundary, inside a header, right after the
    last member (no end-of-archive blocks), inside the end-of-archive blocks."""
    members = _tar_members(shard)
    name, offset, size, _ = members[len(members) // 2]
    last_name, last_offset, last_size, _ = members[-1]
    end = last_offset + -(-last_size // 512) * 512
    return {
        "data": offset + size // 2,
        "header": offset - 512,
        "in-header": offset - 300,
        "end": end,
        "end-blocks": end + 512,
    }


def _imports_tarfile(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tarfile" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tarfile":
            return True
        if (  # __import__("tarfile"), importlib.import_module("tarfile")
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "tarfile"
        ):
            return True
    return False


def test_only_sinks_records_imports_tarfile():
    importers = []
    for pkg in PRODUCT_PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if _imports_tarfile(ast.parse(path.read_text(), filename=str(path))):
                importers.append(path.relative_to(ROOT).as_posix())
    assert "sinks/records.py" in importers  # the scan does see an import
    assert [p for p in importers if p != "sinks/records.py"] == []


def test_reader_keeps_its_public_names():
    assert reader.ShardReadError is records.ShardReadError
    assert reader.ShardsNotFoundError is records.ShardsNotFoundError
    assert reader.resolve_shards is records.resolve_shards
    assert issubclass(records.ShardsNotFoundError, FileNotFoundError)


def test_iterator_yields_every_tar_member_grouped_by_key(shard):
    recs = list(iter_records(shard))
    members = _tar_members(shard)
    assert [f"{r['__key__']}.{n}" for r in recs for n in r if not n.startswith("__")] == [
        m[0] for m in members
    ]
    assert [r["__key__"] for r in recs] == [f"r-{i:010d}" for i in range(3)]
    data = {name: d for name, _, _, d in members}
    for r in recs:
        assert r["__url__"] == str(shard)
        assert {"image.jpg", "label.json", "verts.npy", "mesh.png", "mesh_local.png", "mask.png"} <= set(r)
        assert all(r[n] == data[f"{r['__key__']}.{n}"] for n in r if not n.startswith("__"))


def test_iterator_reads_file_objects_and_urls(shard):
    want = list(iter_records(shard))
    with open(shard, "rb") as f:
        got = list(iter_records(f))
        assert not f.closed  # the caller's file stays open
    assert [r["__url__"] for r in got] == [str(shard)] * 3  # the file's name
    assert [{**r, "__url__": "-"} for r in got] == [{**r, "__url__": "-"} for r in want]
    named = list(iter_records(io.BytesIO(shard.read_bytes()), url="x.tar"))
    assert [r["__url__"] for r in named] == ["x.tar"] * 3
    assert [r["__key__"] for r in list(iter_records(f"file://{shard}"))] == [r["__key__"] for r in want]
    with pytest.raises(ValueError, match="needs its url"):
        list(iter_records(io.BytesIO(shard.read_bytes()), checksums=ShardChecksums()))


def test_iterator_verifies_checksums(run, tmp_path):
    checksums = ShardChecksums()
    assert len(list(iter_records(run / "hands-000001.tar", checksums=checksums))) == 2
    bad = tmp_path / "hands-000001.tar"
    bad.write_bytes((run / "hands-000001.tar").read_bytes() + bytes(512))
    (tmp_path / "manifest.json").write_bytes((run / "manifest.json").read_bytes())
    with pytest.raises(ShardReadError, match=r"hands-000001.tar fails verification"):
        next(iter_records(bad, checksums=ShardChecksums()))


def test_writer_rewrites_a_shard_byte_for_byte(run):
    """Records read back and written again give the very bytes the sink wrote (deterministic headers)."""
    for url in resolve_shards(run):
        buf = io.BytesIO()
        with RecordWriter(buf) as w:
            for rec in iter_records(url):
                w.write(rec)
        assert buf.getvalue() == Path(url).read_bytes()


def test_writer_layout():
    buf = io.BytesIO()
    w = RecordWriter(buf)
    w.write({"__key__": "k-1", "label.json": b"{}", "image.jpg": b"\xff\xd8jpeg", "__url__": "ignored"})
    w.write({"__key__": "k-2", "mesh.png": b""})
    w.close()
    w.close()  # a second close does nothing
    data = buf.getvalue()
    assert len(data) % 512 == 0 and data.endswith(bytes(1024))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        ms = tf.getmembers()
        assert [m.name for m in ms] == ["k-1.image.jpg", "k-1.label.json", "k-2.mesh.png"]
        assert all((m.mtime, m.mode, m.uname, m.gname, m.uid, m.gid) == (0, 0o444, "", "", 0, 0) for m in ms)
        assert tf.extractfile("k-1.image.jpg").read() == b"\xff\xd8jpeg"
    assert [r["__key__"] for r in iter_records(io.BytesIO(data))] == ["k-1", "k-2"]


def test_index_reads_what_the_iterator_yields(run):
    for url in resolve_shards(run):
        recs = list(iter_records(url))
        index = RecordIndex.build(url)
        assert index.keys() == list(index) == [r["__key__"] for r in recs] and len(index) == len(recs)
        assert all(index.read(r["__key__"]) == r for r in recs)
        assert all(list(index.read(r["__key__"])) == list(r) for r in recs)  # files in file order
        members = {name: (offset, size) for name, offset, size, _ in _tar_members(url)}
        assert {f"{k}.{n}": v for k, files in index.members.items() for n, v in files.items()} == members
    index = RecordIndex.build(run / "hands-000000.tar")
    key = index.keys()[1]
    part = index.read(key, ["mesh.png", "label.json"])
    assert list(part) == ["__key__", "__url__", "label.json", "mesh.png"]  # file order
    assert pickle.loads(pickle.dumps(index)) == index  # goes to DataLoader workers
    with pytest.raises(KeyError, match="no record r-9"):
        index.read("r-9")
    with pytest.raises(ShardReadError, match=f"record {key}: no file image.png"):
        index.read(key, ["image.png"])


def test_index_and_iterator_on_an_fsspec_url(shard):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/records-test/hands-000000.tar", shard.read_bytes())
    try:
        url = "memory://records-test/hands-000000.tar"
        assert resolve_shards("memory://records-test") == ["memory:///records-test/hands-000000.tar"]
        recs = list(iter_records(url))
        index = RecordIndex.build(url)
        assert [index.read(r["__key__"]) for r in recs] == recs
    finally:
        fs.rm("/records-test", recursive=True)


@pytest.mark.parametrize("where", ["data", "header", "in-header", "end", "end-blocks"])
def test_truncated_shard_is_a_one_line_error(shard, tmp_path, where):
    full = list(iter_records(shard))
    cut = tmp_path / "cut-000000.tar"
    cut.write_bytes(shard.read_bytes()[: _truncations(shard)[where]])
    got = []
    with pytest.raises(ShardReadError) as err:
        for rec in iter_records(cut):
            got.append(rec)
    assert got == [{**r, "__url__": str(cut)} for r in full[: len(got)]] and len(got) < len(full)
    with pytest.raises(ShardReadError) as err_index:
        RecordIndex.build(cut)
    for e in (err.value, err_index.value):
        msg = str(e)
        assert msg.startswith(f"shard {cut} is corrupt or truncated") and "\n" not in msg, msg
    if got:  # names the last complete record
        assert f"after record {got[-1]['__key__']}" in str(err.value)


def test_index_refuses_what_it_cannot_address(shard, tmp_path):
    import gzip

    gz = tmp_path / "z-000000.tar"
    gz.write_bytes(gzip.compress(shard.read_bytes()))
    with pytest.raises(ShardReadError, match="random access needs an uncompressed tar"):
        RecordIndex.build(gz)
    split = tmp_path / "s-000000.tar"  # a record whose files are not together
    with open(split, "wb") as f, RecordWriter(f) as w:
        w.write({"__key__": "a", "x.txt": b"1"})
        w.write({"__key__": "b", "x.txt": b"2"})
        w.write({"__key__": "a", "y.txt": b"3"})
    assert [r["__key__"] for r in iter_records(split)] == ["a", "b", "a"]
    with pytest.raises(ShardReadError, match=r"s-000000.tar: record a: its files are not consecutive"):
        RecordIndex.build(split)
    with pytest.raises(ShardReadError, match="shard not found"):
        RecordIndex.build(tmp_path / "missing.tar")
    with pytest.raises(ShardReadError, match="not a pipe"):
        RecordIndex.build("pipe:cat x.tar")
    shrunk = tmp_path / "k-000000.tar"
    shrunk.write_bytes(shard.read_bytes())
    index = RecordIndex.build(shrunk)
    shrunk.write_bytes(shard.read_bytes()[:2048])
    with pytest.raises(ShardReadError, match=r"k-000000.tar: record r-0000000002: cannot read"):
        index.read("r-0000000002")
