"""KVQ challenge scorer, CLI and submission writer.

Expected numbers come from SciPy pieces and hand-counted pair accuracies written out in each test, never
from the code under test.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import openpyxl
import pytest
import scipy.optimize
import scipy.stats

from kvq_jax.data import kvq_files, kvq_layout
from kvq_jax.eval import challenge, score, submit
from kvq_jax.eval.challenge import Pair, Pairs, ScoreInputError

REPO = Path(__file__).resolve().parents[1]

# A 6-video hand case.  Pred has a tie (b == c) that the pair rule must resolve as "video1 better".
TRUTH = {"a.mp4": 4.5, "b.mp4": 3.0, "c.mp4": 3.5, "d.mp4": 1.5, "e.mp4": 2.0, "f.mp4": 5.0}
PRED = {"f.mp4": 0.9, "a.mp4": 0.8, "b.mp4": 0.5, "c.mp4": 0.5, "d.mp4": 0.3, "e.mp4": 0.1}
SOURCE = [("a.mp4", "b.mp4", 1), ("b.mp4", "c.mp4", 2), ("d.mp4", "e.mp4", 2)]
NONSOURCE = [("f.mp4", "d.mp4", 1), ("c.mp4", "b.mp4", 1), ("e.mp4", "a.mp4", 2), ("b.mp4", "a.mp4", 1)]
# Hand count, pred rank = 1 iff score1 >= score2:
#   source:    a>b -> 1 == 1 ok | b==c tie -> 1 != 2 wrong | d>e -> 1 != 2 wrong          => 1/3
#   nonsource: f>d -> 1 ok | c==b tie -> 1 ok | e<a -> 2 ok | b<a -> 2 != 1 wrong          => 3/4
RANK1, RANK2 = 1 / 3, 3 / 4


def _expected(pred=PRED, truth=TRUTH, rank1=RANK1, rank2=RANK2) -> dict:
    y = [truth[k] for k in truth]
    p = [pred[k] for k in truth]
    srocc, plcc = scipy.stats.spearmanr(y, p)[0], scipy.stats.pearsonr(y, p)[0]
    return {"final": 0.45 * srocc + 0.45 * plcc + 0.05 * rank2 + 0.05 * rank1, "srocc": srocc, "plcc": plcc}


def _pairs(source=SOURCE, nonsource=NONSOURCE) -> Pairs:
    return Pairs(tuple(Pair(*r) for r in source), tuple(Pair(*r) for r in nonsource))


def _write_scores(path: Path, scores, header=True) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(["filename", "score"])
        for k, v in scores.items() if isinstance(scores, dict) else scores:
            w.writerow([k, v])
    return path


def _write_xlsx(path: Path, sheets: dict[str, list]) -> Path:
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        ws.append(["video1", "video2", "rank"])
        for row in rows:
            ws.append(list(row))
    wb.save(path)
    return path


def _write_pair_csv(path: Path, rows, header=("video1", "video2", "rank")) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------ pure scoring


def test_pair_accuracy_tie_rule_by_hand():
    scores = {"x": 2.0, "y": 2.0, "z": 1.0}
    # (x,y) tie -> predicted 1, label 1: right; (y,x) tie -> predicted 1, label 2: wrong; (z,x) -> 2: right
    pairs = [Pair("x", "y", 1), Pair("y", "x", 2), Pair("z", "x", 2)]
    assert challenge.pair_accuracy(scores, pairs) == pytest.approx(2 / 3)
    assert challenge.pair_accuracy(PRED, _pairs().source) == pytest.approx(RANK1)
    assert challenge.pair_accuracy(PRED, _pairs().nonsource) == pytest.approx(RANK2)


def test_challenge_score_hand_case():
    got = challenge.challenge_score(PRED, TRUTH, _pairs())
    exp = _expected()
    assert got.final == pytest.approx(exp["final"], abs=1e-12)
    assert got.srocc == pytest.approx(exp["srocc"], abs=1e-12)
    assert got.plcc == pytest.approx(exp["plcc"], abs=1e-12)
    assert (got.rank1, got.rank2, got.n) == (pytest.approx(RANK1), pytest.approx(RANK2), 6)
    y = np.array(list(TRUTH.values()))
    p = np.array([PRED[k] for k in TRUTH])
    assert got.krocc == pytest.approx(scipy.stats.kendalltau(y, p)[0], abs=1e-12)
    rescaled = (p - p.mean()) / p.std() * y.std() + y.mean()
    assert got.rmse == pytest.approx(np.sqrt(np.mean((rescaled - y) ** 2)), abs=1e-12)
    assert set(got.to_dict()) == {"final", "srocc", "plcc", "rank1", "rank2", "krocc", "rmse", "n"}


def test_challenge_score_uses_raw_predictions_and_ignores_extras():
    # a monotone but non-linear transform keeps SROCC and pair accuracy but changes PLCC: no fit is applied
    warped = {k: v**3 for k, v in PRED.items()} | {"not_in_truth.mp4": 100.0}
    got = challenge.challenge_score(warped, TRUTH, _pairs())
    exp = _expected(pred=warped)
    assert got.plcc == pytest.approx(exp["plcc"], abs=1e-12)
    assert got.plcc != pytest.approx(_expected()["plcc"], abs=1e-3)
    assert got.final == pytest.approx(exp["final"], abs=1e-12)


# ------------------------------------------------------------------------------------------ readers


def test_read_scores_csv_formats(tmp_path):
    header = _write_scores(tmp_path / "h.csv", PRED)
    headerless = _write_scores(tmp_path / "output.txt", PRED, header=False)  # KVQ trainer's output.txt
    bom = tmp_path / "bom.csv"
    bom.write_bytes(
        b"\xef\xbb\xbfscore , FileName,extra\n" + b"".join(f"{v},{k},x\n".encode() for k, v in PRED.items())
    )
    for path in (header, headerless, bom):
        got = challenge.read_scores_csv(path)
        assert got == PRED and list(got) == list(PRED)


def test_read_pairs_xlsx_and_csv_forms_agree(tmp_path):
    expected = _pairs()
    xlsx = _write_xlsx(tmp_path / "rank-pair-val.xlsx", {"source": SOURCE, "nonsource": NONSOURCE, "notes": []})
    by_name = [
        _write_pair_csv(tmp_path / "rank_source.csv", SOURCE),
        _write_pair_csv(tmp_path / "rank_nonsource.csv", NONSOURCE),
    ]
    prefixed = [f"source={by_name[0]}", f"nonsource={_write_pair_csv(tmp_path / 'b.csv', NONSOURCE)}"]
    one = _write_pair_csv(
        tmp_path / "pairs.csv",
        [("source", *r) for r in SOURCE] + [("nonsource", *r) for r in NONSOURCE],
        header=("sheet", "video1", "video2", "rank"),
    )
    for spec in (xlsx, str(xlsx), by_name, prefixed, one):
        assert challenge.read_pairs(spec) == expected


def test_xlsx_first_row_is_a_header_like_the_official_reader(tmp_path):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "source"
    ws.append(["a.mp4", "b.mp4", 1])  # no header: pandas would take this row as the header
    ws.append(["d.mp4", "e.mp4", 2])
    wb.create_sheet("nonsource").append(["video1", "video2", "rank"])
    wb["nonsource"].append(["f.mp4", "d.mp4", 1])
    wb.save(tmp_path / "p.xlsx")
    with pytest.warns(UserWarning, match=r"source\] row 1 looks like a pair"):
        got = challenge.read_pairs(tmp_path / "p.xlsx")
    assert got.source == (Pair("d.mp4", "e.mp4", 2),)


def test_builder_and_scorer_share_the_pair_reader(tmp_path):
    """kvq_layout (dataset builder) and the scorer read a workbook alike; each raises its own error type."""
    source = [(a, b, float(r)) for a, b, r in SOURCE]  # ranks stored as 1.0 / 2.0 read as 1 / 2
    xlsx = _write_xlsx(tmp_path / "rank-pair-val.xlsx", {"source": source, "nonsource": NONSOURCE})
    assert kvq_layout.read_pairs(xlsx, set(TRUTH)) == {"source": SOURCE, "nonsource": NONSOURCE}
    assert challenge.read_pairs(xlsx) == _pairs()
    bad = _write_xlsx(tmp_path / "bad.xlsx", {"source": [*SOURCE, ("a.mp4", "b.mp4", 1.5)], "nonsource": NONSOURCE})
    message = r"bad\.xlsx\[source\] row 5: rank label 1\.5 is not 1 \(video1 better\) or 2"
    with pytest.raises(kvq_layout.LayoutError, match=message) as layout_err:
        kvq_layout.read_pairs(bad, set(TRUTH))
    with pytest.raises(ScoreInputError, match=message) as scorer_err:
        challenge.read_pairs(bad)
    assert str(layout_err.value) == str(scorer_err.value)
    assert isinstance(layout_err.value, kvq_files.KvqFileError) and isinstance(scorer_err.value, kvq_files.KvqFileError)


def test_basename_matching(tmp_path):
    truth = _write_scores(tmp_path / "truth.csv", {f"train/{k}": v for k, v in TRUTH.items()})
    pred = _write_scores(tmp_path / "pred.csv", PRED)
    with pytest.raises(ScoreInputError, match=r"'train/a\.mp4'.*--basename"):
        challenge.challenge_score(challenge.read_scores_csv(pred), challenge.read_scores_csv(truth), _pairs())
    got = challenge.challenge_score(
        challenge.read_scores_csv(pred, basename=True),
        challenge.read_scores_csv(truth, basename=True),
        _pairs(),
    )
    assert got.final == pytest.approx(_expected()["final"], abs=1e-12)
    clash = _write_scores(tmp_path / "clash.csv", {"train/a.mp4": 1.0, "val/a.mp4": 2.0})
    with pytest.raises(ScoreInputError, match=r"'val/a\.mp4'.*first as 'train/a\.mp4'"):
        challenge.read_scores_csv(clash, basename=True)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_end_to_end_subprocess(tmp_path):
    """Files written with csv/openpyxl, the scorer run as a user would; expectations from SciPy + hand."""
    pred = _write_scores(tmp_path / "prediction.csv", PRED)
    truth = _write_scores(tmp_path / "truth.csv", TRUTH)
    xlsx = _write_xlsx(tmp_path / "rank-pair-val.xlsx", {"source": SOURCE, "nonsource": NONSOURCE})
    res = _run_cli("kvq_jax.eval.score", "--pred", str(pred), "--truth", str(truth), "--pairs", str(xlsx))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert list(out) == ["final", "srocc", "plcc", "rank1", "rank2", "krocc", "rmse", "n"]
    exp = _expected()
    for k in ("final", "srocc", "plcc"):
        assert out[k] == pytest.approx(exp[k], abs=1e-12)
    assert (out["rank1"], out["rank2"], out["n"]) == (pytest.approx(1 / 3), pytest.approx(3 / 4), 6)


def test_cli_csv_pairs_and_bootstrap(tmp_path, capsys):
    pred = _write_scores(tmp_path / "prediction.csv", PRED, header=False)
    truth = _write_scores(tmp_path / "truth.csv", TRUTH)
    src = _write_pair_csv(tmp_path / "rank_source.csv", SOURCE)
    non = _write_pair_csv(tmp_path / "rank_nonsource.csv", NONSOURCE)
    argv = ["--pred", str(pred), "--truth", str(truth), "--pairs", str(src), "--pairs", str(non)]
    assert score.main([*argv, "--bootstrap", "200", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["final"] == pytest.approx(_expected()["final"], abs=1e-12)
    assert set(out["ci95"]) == {"final", "srocc", "plcc", "rank1", "rank2", "krocc", "rmse"}
    assert out["bootstrap"]["replicates"] == 200 and 0 < out["bootstrap"]["used"] <= 200
    for k, (lo, hi) in out["ci95"].items():
        assert lo <= hi, k
    assert score.main([*argv, "--bootstrap", "200", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == out  # seeded: reproducible


def _vqeg(x, b1, b2, b3, b4):
    """The VQEG 4-parameter logistic, written out here rather than taken from the code under test."""
    with np.errstate(over="ignore"):
        return b2 + (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4)))


def test_cli_logistic_matches_curve_fit_and_leaves_final_raw(tmp_path, capsys):
    # a steep S-shaped (monotone, non-linear) mapping from scores to MOS plus noise: the raw PLCC is clearly
    # below 1, the PLCC after refitting the logistic is close to 1
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 1, 60)
    y = _vqeg(x, 4.6, 1.3, 0.45, 0.08) + rng.normal(0, 0.05, 60)
    names = [f"v{i:02d}.mp4" for i in range(60)]
    pred = _write_scores(tmp_path / "prediction.csv", dict(zip(names, x, strict=True)))
    truth = _write_scores(tmp_path / "truth.csv", dict(zip(names, y, strict=True)))
    pairs = [(names[i], names[i + 1], 1 if y[i] >= y[i + 1] else 2) for i in range(0, 58, 2)]
    xlsx = _write_xlsx(tmp_path / "rank-pair-val.xlsx", {"source": pairs[:10], "nonsource": pairs[10:]})
    argv = ["--pred", str(pred), "--truth", str(truth), "--pairs", str(xlsx)]
    assert score.main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert score.main([*argv, "--logistic"]) == 0
    out = json.loads(capsys.readouterr().out)

    beta, _ = scipy.optimize.curve_fit(_vqeg, x, y, p0=[y.max(), y.min(), x.mean(), 0.5], maxfev=20000)
    fitted = _vqeg(x, *beta)
    assert out["plcc_logistic"] == pytest.approx(scipy.stats.pearsonr(fitted, y)[0], abs=1e-6)
    assert out["rmse_logistic"] == pytest.approx(np.sqrt(np.mean((fitted - y) ** 2)), rel=1e-4)
    assert out["plcc"] == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)
    assert out["plcc"] < 0.96 and out["plcc_logistic"] > 0.999
    assert list(out) == [*plain, "plcc_logistic", "rmse_logistic"]
    assert {k: out[k] for k in plain} == plain  # final and every other field: unchanged, from raw predictions


# ------------------------------------------------------------------------------------------ bad input


def _bad_case(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """Files for one bad-input case: (CLI argv, regex the error must match, naming the offender)."""
    pred, truth = dict(PRED), dict(TRUTH)
    source, nonsource = list(SOURCE), list(NONSOURCE)
    pred_rows = None
    pattern = ""
    if case == "missing_prediction":
        del pred["e.mp4"]
        pattern = r"1 of 6 truth videos have no prediction: 'e\.mp4'"
    elif case == "duplicate_prediction":
        pred_rows = [*PRED.items(), ("c.mp4", 0.7)]
        pattern = r"prediction\.csv: duplicate video names: 'c\.mp4' \(.*:8; first as 'c\.mp4' at .*:5\)"
    elif case == "duplicate_truth":
        truth["b.mp4 "] = 1.0  # stripped: the same name twice
        pattern = r"truth\.csv: duplicate video names: 'b\.mp4'"
    elif case == "nan_score":
        pred["d.mp4"] = float("nan")
        pattern = r"prediction\.csv:6: score for 'd\.mp4' is 'nan'"
    elif case == "non_numeric_score":
        pred["d.mp4"] = "good"
        pattern = r"prediction\.csv:6: score 'good' for 'd\.mp4' is not a number"
    elif case == "unknown_pair_video":
        nonsource.append(("a.mp4", "zz.mp4", 1))
        pattern = r"nonsource pairs name 1 videos that are not in the truth file: 'zz\.mp4'"
    elif case == "bad_rank_label":
        source.append(("a.mp4", "b.mp4", 0))
        pattern = r"\[source\] row 5: rank label 0 is not 1"
    elif case == "missing_sheet":
        nonsource = None
        pattern = r"no nonsource pairs"
    elif case == "empty_pred":
        pred_rows = []
        pattern = r"prediction\.csv: empty file"
    elif case == "header_only_truth":
        truth = {}
        pattern = r"truth\.csv: header only"
    p = tmp_path / "prediction.csv"
    if pred_rows == []:
        p.write_text("")
    else:
        _write_scores(p, pred_rows if pred_rows is not None else pred)
    t = _write_scores(tmp_path / "truth.csv", truth)
    sheets = {"source": source} | ({"nonsource": nonsource} if nonsource is not None else {})
    x = _write_xlsx(tmp_path / "rank-pair-val.xlsx", sheets)
    return ["--pred", str(p), "--truth", str(t), "--pairs", str(x)], pattern


BAD_CASES = [
    "missing_prediction",
    "duplicate_prediction",
    "duplicate_truth",
    "nan_score",
    "non_numeric_score",
    "unknown_pair_video",
    "bad_rank_label",
    "missing_sheet",
    "empty_pred",
    "header_only_truth",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_naming_the_offender(tmp_path, capsys, case):
    argv, pattern = _bad_case(tmp_path, case)
    assert score.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert re.search(pattern, captured.err), captured.err


def test_bad_input_subprocess_exit_code(tmp_path):
    argv, _ = _bad_case(tmp_path, "missing_prediction")
    res = _run_cli("kvq_jax.eval.score", *argv)
    assert res.returncode == 2 and res.stdout == ""
    assert "'e.mp4'" in res.stderr and "Traceback" not in res.stderr


def test_zip_without_prediction_csv_is_refused(tmp_path):
    bad = tmp_path / "sub.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("results/prediction.csv", "filename,score\na.mp4,1\n")
    with pytest.raises(ScoreInputError, match=r"no 'prediction\.csv' at the zip root \('results/prediction\.csv'\)"):
        challenge.read_scores_csv(bad)
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(ScoreInputError, match=r"fake\.zip: not a valid zip file"):
        challenge.read_scores_csv(tmp_path / "fake.zip")


def test_library_errors_are_one_catchable_class():
    with pytest.raises(ValueError, match=r"prediction has NaN, infinite or non-numeric scores for 'b\.mp4'"):
        challenge.challenge_score(PRED | {"b.mp4": float("inf")}, TRUTH, _pairs())
    with pytest.raises(ScoreInputError, match=r"all predictions equal 0\.5"):
        challenge.challenge_score(dict.fromkeys(PRED, 0.5), TRUTH, _pairs())
    with pytest.raises(ScoreInputError, match=r"pairs name 1 videos without a score: 'q'"):
        challenge.pair_accuracy(PRED, [Pair("a.mp4", "q", 1)])


# ------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_degenerate_and_fisher_z():
    # perfect, pair-consistent predictions: every replicate is perfect
    perfect = {k: 10 * v for k, v in TRUTH.items()}
    pairs = _pairs(source=[("a.mp4", "b.mp4", 1)], nonsource=[("e.mp4", "f.mp4", 2), ("d.mp4", "c.mp4", 2)])
    ci, used = challenge.bootstrap_ci(perfect, TRUTH, pairs, n_boot=300, seed=0)
    assert used > 0
    for k in ("final", "srocc", "plcc", "rank1", "rank2", "krocc"):
        assert ci[k] == (pytest.approx(1.0), pytest.approx(1.0)), k

    # bivariate normal, rho = 0.8, n = 400: the percentile interval for PLCC should be close to Fisher's z
    rng = np.random.default_rng(1)
    n = 400
    y = rng.normal(size=n)
    p = 0.8 * y + 0.6 * rng.normal(size=n)
    truth = {f"v{i}": float(v) for i, v in enumerate(y)}
    pred = {f"v{i}": float(v) for i, v in enumerate(p)}
    pairs = _pairs(source=[("v0", "v1", 1), ("v2", "v3", 2)] * 50, nonsource=[("v4", "v5", 1)] * 100)
    ci, used = challenge.bootstrap_ci(pred, truth, pairs, n_boot=1000, seed=0)
    r = scipy.stats.pearsonr(y, p)[0]
    z, se = np.arctanh(r), 1 / np.sqrt(n - 3)
    lo, hi = np.tanh(z - 1.959964 * se), np.tanh(z + 1.959964 * se)
    assert ci["plcc"][0] == pytest.approx(lo, abs=0.02) and ci["plcc"][1] == pytest.approx(hi, abs=0.02)
    assert ci["final"][0] < ci["final"][1]


# --------------------------------------------------------------------------------------- submission


def test_submission_zip_round_trips_through_the_scorer(tmp_path, capsys):
    preds = {k: v * 1 / 3 for k, v in PRED.items()}  # floats without short decimal forms
    csv_path, zip_path = submit.write_submission(preds, tmp_path / "sub")
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == ["prediction.csv"]
        zipped = zf.read("prediction.csv").decode()
    rows = list(csv.reader(zipped.splitlines()))
    assert rows[0] == ["filename", "score"]
    assert [r[0] for r in rows[1:]] == sorted(preds)
    assert {r[0]: float(r[1]) for r in rows[1:]} == preds  # exact floats
    assert csv_path.read_text() == zipped
    # byte-reproducible archive
    _, zip2 = submit.write_submission(dict(reversed(preds.items())), tmp_path / "sub2")
    assert zip2.read_bytes() == zip_path.read_bytes()

    truth = _write_scores(tmp_path / "truth.csv", TRUTH)
    xlsx = _write_xlsx(tmp_path / "rank-pair-val.xlsx", {"source": SOURCE, "nonsource": NONSOURCE})
    assert score.main(["--pred", str(zip_path), "--truth", str(truth), "--pairs", str(xlsx)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["final"] == pytest.approx(_expected(pred=preds)["final"], abs=1e-12)


def test_submit_cli_validates_coverage(tmp_path, capsys):
    truth = _write_scores(tmp_path / "truth.csv", TRUTH)
    pred = _write_scores(tmp_path / "output.txt", {k: v for k, v in PRED.items() if k != "c.mp4"}, header=False)
    assert submit.main(["--pred", str(pred), "--out", str(tmp_path / "o"), "--truth", str(truth)]) == 2
    assert "lack a prediction: 'c.mp4'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    full = _write_scores(tmp_path / "full.txt", PRED, header=False)
    res = _run_cli("kvq_jax.eval.submit", "--pred", str(full), "--out", str(tmp_path / "o"), "--truth", str(truth))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["n"] == 6 and Path(out["zip"]).is_file() and "Warning" not in res.stderr
    with zipfile.ZipFile(out["zip"]) as zf:
        got = {r[0]: float(r[1]) for r in list(csv.reader(zf.read("prediction.csv").decode().splitlines()))[1:]}
    assert got == PRED
