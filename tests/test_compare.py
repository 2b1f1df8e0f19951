"""evaluation.compare and bench/compare_runs.py: paired comparison of two evaluated runs."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.compare import CompareError, compare, compare_runs, eligible_hands, load_scores, sign_test

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _row(index, right=None, left=None):
    """A scores row: ``right``/``left`` None (no hand), or (eligible, detected, pck_01)."""
    row = {"index": index, "key": f"run{index % 2}-{index:010d}"}  # keys differ between runs: not used
    for side, hand in (("right", right), ("left", left)):
        e, d, p = hand if hand is not None else (None, None, None)
        row.update({f"{side}_eligible": e, f"{side}_detected": d, f"{side}_pck_01": p})
    return row


def _write(path: Path, rows) -> Path:
    (path / "eval").mkdir(parents=True)
    schema = pa.schema(
        [("index", pa.int64()), ("key", pa.string())]
        + [
            (f"{s}_{c}", t)
            for s in ("right", "left")
            for c, t in (("eligible", pa.bool_()), ("detected", pa.bool_()), ("pck_01", pa.float64()))
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path / "eval" / "scores.parquet")
    return path


def test_sign_test_matches_the_binomial():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 5) == 1.0
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(0, 10) == sign_test(10, 0)
    # 26 against 12: sum_{i<=12} C(38, i) / 2^38, doubled
    assert sign_test(26, 12) == pytest.approx(2 * sum(math.comb(38, i) for i in range(13)) / 2**38)
    assert 0.03 < sign_test(26, 12) < 0.04


def test_compare_counts_flips_on_common_eligible_hands_only():
    before = [
        _row(0, right=(True, True, 0.9)),
        _row(1, right=(True, False, None), left=(True, True, 0.5)),
        _row(2, left=(False, True, 0.8)),  # not eligible: ignored
        _row(3, right=(True, True, 0.6)),  # eligible only here: not common
    ]
    after = [
        _row(0, right=(True, False, float("nan"))),  # lost
        _row(1, right=(True, True, 0.7), left=(True, True, 0.7)),  # right gained; left in both
        _row(2, left=(True, True, 0.8)),  # eligible only here
        _row(3, right=(False, True, 0.6)),
    ]
    got = compare(eligible_hands(before), eligible_hands(after))
    assert (got.eligible_a, got.eligible_b, got.common) == (4, 4, 3)
    assert (got.detected_a, got.detected_b) == (3, 3)
    assert (got.gained, got.lost, got.both) == (1, 1, 1)
    assert got.pck_both_a == pytest.approx(0.5) and got.pck_both_b == pytest.approx(0.7)
    assert got.sign_test_p == 1.0
    line = got.line()
    assert "gained 1, lost 1" in line and "0.500 -> 0.700" in line


def test_compare_pairs_the_handedness_of_hands_detected_in_both():
    """Handedness flips are counted over the hands detected in both runs whose scores hold a handedness;
    rows without the column (older scores) leave it out of the line."""

    def row(index, detected, agrees):
        r = _row(index, right=(True, detected, 0.8 if detected else None))
        r["right_handedness_agrees"] = agrees
        return r

    before = [row(0, True, False), row(1, True, False), row(2, True, True), row(3, False, None)]
    after = [row(0, True, True), row(1, True, True), row(2, True, True), row(3, True, True)]
    got = compare(eligible_hands(before), eligible_hands(after))
    assert (got.handed_both, got.handed_agree_a, got.handed_agree_b) == (3, 1, 3)
    assert (got.handed_gained, got.handed_lost) == (2, 0) and got.handed_sign_test_p == sign_test(2, 0)
    assert (
        "handedness right on 3 hands detected in both: 1 / 3 (0.33) -> 3 / 3 (1.00), gained 2" in got.line()
    )
    plain = [_row(i, right=(True, True, 0.8)) for i in range(4)]
    assert compare(eligible_hands(plain), eligible_hands(after)).handed_both == 0
    assert "handedness" not in compare(eligible_hands(plain), eligible_hands(after)).line()


def test_runs_on_disk_and_bad_input(tmp_path):
    a = _write(tmp_path / "a", [_row(i, right=(True, i < 3, 0.8 if i < 3 else None)) for i in range(10)])
    b = _write(tmp_path / "b", [_row(i, right=(True, True, 0.9)) for i in range(10)])
    got = compare_runs(a, b / "eval" / "scores.parquet")  # a run folder, or the scores file itself
    assert (got.gained, got.lost, got.detected_a, got.detected_b) == (7, 0, 3, 10)
    assert got.sign_test_p == pytest.approx(2 / 2**7)
    with pytest.raises(CompareError, match="hands evaluate"):
        load_scores(tmp_path / "missing")
    pq.write_table(pa.table({"index": [0], "key": ["x"]}), tmp_path / "thin.parquet")
    with pytest.raises(CompareError, match="lacks the columns"):
        load_scores(tmp_path / "thin.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(CompareError, match="not a readable parquet"):
        load_scores(tmp_path / "junk.parquet")


def test_bench_script(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))  # for ``_benchpath``, which takes bench/ off the path again
    spec = importlib.util.spec_from_file_location("compare_runs", BENCH / "compare_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if str(BENCH) in sys.path:
        sys.path.remove(str(BENCH))
    a = _write(tmp_path / "a", [_row(7, right=(True, False, None))])
    b = _write(tmp_path / "b", [_row(7, right=(True, True, 0.5))])
    assert mod.main([str(a), str(b)]) == 0
    assert "gained 1, lost 0" in capsys.readouterr().out
    assert mod.main([str(a), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no scores at") and "Traceback" not in err


def _faced(index, facing, before, after):
    """Rows of one single right hand, eligible in both runs, with its label's facing: (before, after) rows;
    ``before``/``after``: detected or not."""
    return tuple(
        {**_row(index, right=(True, d, 0.8 if d else None)), "right_facing": facing} for d in (before, after)
    )


def test_split_by_facing_and_pooling_pairs_of_other_seeds():
    from evaluation.compare import hand_groups, split

    seed0 = [_faced(0, "palm", False, True), _faced(1, "palm", True, True), _faced(2, "back", True, False)]
    seed1 = [_faced(0, "side", False, True), _faced(1, "palm", False, True)]  # the same indices, other hands
    pooled_a, pooled_b, groups = {}, {}, {}
    for tag, pairs in (("0", seed0), ("1", seed1)):
        before, after = [p[0] for p in pairs], [p[1] for p in pairs]
        pooled_a.update(eligible_hands(before, tag))
        pooled_b.update(eligible_hands(after, tag))
        groups.update(hand_groups(before, "facing", tag))
    assert len(pooled_a) == 5 and ("1", 0, "right") in pooled_a  # tags keep index 0 of both seeds apart
    got = compare(pooled_a, pooled_b)
    assert (got.common, got.gained, got.lost) == (5, 3, 1)
    by = split(pooled_a, pooled_b, groups, order=("palm", "back", "side"))
    assert list(by) == ["palm", "back", "side"]
    assert {g: (c.common, c.gained, c.lost) for g, c in by.items()} == {
        "palm": (3, 2, 0),
        "back": (1, 0, 1),
        "side": (1, 1, 0),
    }
    assert by["palm"].detected_a == 1 and by["palm"].detected_b == 3
    assert list(split(pooled_a, pooled_b, groups)) == ["back", "palm", "side"]  # no order: sorted
    # every split of hands evaluate names the column it reads
    from evaluation.compare import _SPLIT_COLUMN
    from evaluation.run import BREAKDOWNS

    assert set(_SPLIT_COLUMN) == set(BREAKDOWNS)
    # scores without the split's column have no groups; an unknown split is one line
    assert hand_groups([_row(0, right=(True, True, 0.9))], "facing") == {}
    with pytest.raises(CompareError, match="unknown split 'colour'"):
        hand_groups([], "colour")


def test_bench_script_splits_and_pools(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("compare_runs_split", BENCH / "compare_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if str(BENCH) in sys.path:
        sys.path.remove(str(BENCH))

    def write(name, rows):
        (tmp_path / name / "eval").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / name / "eval" / "scores.parquet")
        return str(tmp_path / name)

    pairs = [_faced(0, "palm", False, True), _faced(1, "back", True, True)]
    a0, b0 = write("a0", [p[0] for p in pairs]), write("b0", [p[1] for p in pairs])
    a1, b1 = (
        write("a1", [_faced(0, "palm", True, False)[0]]),
        write("b1", [_faced(0, "palm", True, False)[1]]),
    )
    assert mod.main([a0, b0, "--by", "facing", "--also", a1, b1]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2 pairs pooled: detected 2 / 3 (0.67) -> 2 / 3 (0.67)")
    assert "gained 1, lost 1" in out[0]
    assert out[1].startswith("  facing palm: detected 1 / 2") and "gained 1, lost 1" in out[1]
    assert out[2].startswith("  facing back: detected 1 / 1") and "gained 0, lost 0" in out[2]
    assert mod.main([a0, b0, b1, "--also", a1, b1]) == 2
    assert "needs exactly one AFTER" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's own one-line usage error
        mod.main([a0, b0, "--by", "colour"])
    assert exc.value.code == 2 and "invalid choice: 'colour'" in capsys.readouterr().err
