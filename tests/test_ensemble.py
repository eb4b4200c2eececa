"""Ensembles of prediction files: hand-computed fusions, fitted weights that recover known ones, alignment errors,
and the CLI's side-by-side table, paired bootstrap and submission."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from kvq_jax.eval import ensemble
from kvq_jax.eval.challenge import Pair, Pairs, ScoreInputError, challenge_score

X = np.array([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0]])


def test_fusions_by_hand():
    s = np.sqrt(1.5)  # z-scores of (1, 2, 3) with the population std: (−√1.5, 0, √1.5)
    np.testing.assert_allclose(ensemble.fuse(X, "zmean"), [-s, s / 2, s / 2])
    np.testing.assert_allclose(ensemble.fuse(X, "rank"), [1 / 3, 5 / 6, 5 / 6])
    np.testing.assert_allclose(ensemble.fuse(X, "mean"), [5.5, 16.0, 11.5])
    sig = lambda z: 100 / (1 + np.exp(-z))
    np.testing.assert_allclose(ensemble.fuse(X, "sigmoid"), [sig(-s), (sig(0) + sig(s)) / 2, (sig(s) + sig(0)) / 2])
    w = (np.array([2.0, -1.0]), 0.5)
    np.testing.assert_allclose(ensemble.fuse(X, "lstsq", w), [2 * -s + s + 0.5, 0 - s + 0.5, 2 * s - 0 + 0.5])
    with pytest.raises(ValueError, match="needs weights"):
        ensemble.fuse(X, "nnls")
    with pytest.raises(ScoreInputError, match="same score"):
        ensemble.fuse(np.array([[1.0, 2.0], [1.0, 3.0]]), "zmean")


def test_fitted_weights_recover_known_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) * [1.0, 5.0, 0.2] + [0.0, 3.0, -1.0]
    z = (x - x.mean(0)) / x.std(0)
    y = 2.0 * z[:, 0] + 0.5 * z[:, 1] + 3.0  # member 3 carries nothing
    w, b = ensemble.fit_weights(x, y, nonnegative=False)
    np.testing.assert_allclose(w, [2.0, 0.5, 0.0], atol=1e-10)
    assert b == pytest.approx(3.0)
    w, b = ensemble.fit_weights(x, y, nonnegative=True)
    np.testing.assert_allclose(w, [2.0, 0.5, 0.0], atol=1e-10)
    # A member that hurts gets weight 0 under NNLS; least squares gives it its negative weight.
    y = 1.0 * z[:, 0] - 0.7 * z[:, 2]
    assert ensemble.fit_weights(x, y, nonnegative=False)[0][2] == pytest.approx(-0.7)
    assert ensemble.fit_weights(x, y, nonnegative=True)[0][2] == 0.0


def test_alignment_errors_name_the_videos():
    names, x = ensemble.align({"a": {"v1": 1.0, "v2": 2.0}, "b": {"v2": 5.0, "v1": 4.0}})
    assert names == ["v1", "v2"] and x.tolist() == [[1.0, 4.0], [2.0, 5.0]]
    with pytest.raises(ScoreInputError, match=r"b lacks 1 video\(s\) of a: \['v2'\]"):
        ensemble.align({"a": {"v1": 1.0, "v2": 2.0}, "b": {"v1": 4.0}})
    with pytest.raises(ScoreInputError, match=r"b has 1 video\(s\) that a lacks: \['v3'\]"):
        ensemble.align({"a": {"v1": 1.0}, "b": {"v1": 4.0, "v3": 1.0}})


def _write(path, scores):
    path.write_text("filename,score\n" + "".join(f"{k},{v}\n" for k, v in scores.items()))
    return path


@pytest.fixture
def challenge_files(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"v{i:02d}.mp4" for i in range(40)]
    truth = dict(zip(names, rng.uniform(1, 5, 40).round(2).tolist(), strict=True))
    y = np.array(list(truth.values()))
    members = {f"m{k}.csv": y + rng.normal(0, 0.8, 40) for k in range(3)}  # independent errors: fusion helps
    paths = [_write(tmp_path / k, dict(zip(names, v.tolist(), strict=True))) for k, v in members.items()]
    pairs = tmp_path / "rank_source.csv"
    pairs.write_text("video1,video2,rank\n" + "".join(f"{names[i]},{names[i + 1]},1\n" for i in range(0, 20, 2)))
    nonsource = tmp_path / "rank_nonsource.csv"
    nonsource.write_text("video1,video2,rank\n" + "".join(f"{names[i]},{names[i + 3]},2\n" for i in range(20, 36)))
    return paths, _write(tmp_path / "truth.csv", truth), [pairs, nonsource], truth


def test_cli_table_output_bootstrap_and_submission(challenge_files, tmp_path, capsys):
    paths, truth_path, pair_paths, truth = challenge_files
    out, sub = tmp_path / "ens.csv", tmp_path / "sub"
    argv = [*map(str, paths), "--truth", str(truth_path), "--pairs", *map(str, pair_paths)]
    assert ensemble.main([*argv, "--out", str(out), "--bootstrap", "200", "--submit", str(sub)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["final", "srocc", "plcc", "plcc_log", "rank1", "rank2", "krocc"]
    rows = {line.rsplit(None, 7)[0].strip(): [float(v) for v in line.rsplit(None, 7)[1:]] for line in printed[1:5]}
    assert set(rows) == {"m0.csv", "m1.csv", "m2.csv", "ensemble (zmean)"}
    fused = dict(line.split(",") for line in out.read_text().splitlines()[1:])
    fused = {k: float(v) for k, v in fused.items()}
    members = {
        p.name: {k: float(v) for k, v in (ln.split(",") for ln in p.read_text().splitlines()[1:])} for p in paths
    }
    pairs = Pairs(
        source=tuple(Pair(f"v{i:02d}.mp4", f"v{i + 1:02d}.mp4", 1) for i in range(0, 20, 2)),
        nonsource=tuple(Pair(f"v{i:02d}.mp4", f"v{i + 3:02d}.mp4", 2) for i in range(20, 36)),
    )
    assert rows["ensemble (zmean)"][0] == pytest.approx(challenge_score(fused, truth, pairs).final, abs=1e-4)
    assert rows["m1.csv"][0] == pytest.approx(challenge_score(members["m1.csv"], truth, pairs).final, abs=1e-4)
    gain = json.loads(printed[5])
    assert gain["best_member"] in members and 0 <= gain["p_gain"] <= 1 and gain["low"] <= gain["high"]
    best = challenge_score(members[gain["best_member"]], truth, pairs).final
    assert gain["gain"] == pytest.approx(challenge_score(fused, truth, pairs).final - best)
    with zipfile.ZipFile(sub / "submission.zip") as z:
        assert z.namelist() == ["prediction.csv"]


def test_paired_gain_of_a_member_against_itself_is_exactly_zero(challenge_files):
    paths, _, pair_paths, truth = challenge_files
    from kvq_jax.eval.challenge import read_pairs, read_scores_csv

    member = read_scores_csv(paths[0])
    gain = ensemble.paired_gain(member, member, truth, read_pairs(pair_paths), n_boot=50)
    assert gain["gain"] == gain["low"] == gain["high"] == 0.0 and gain["p_gain"] == 0.0


def test_cli_fit_reports_weights_and_refuses_bad_inputs(challenge_files, tmp_path, capsys):
    paths, truth_path, _, _ = challenge_files
    argv = [*map(str, paths), "--method", "nnls", "--fit", *map(str, paths), "--fit-truth", str(truth_path)]
    assert ensemble.main([*argv, "--out", str(tmp_path / "e.csv")]) == 0
    assert "fitted weights (nnls, on 40 videos)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ensemble.main([*map(str, paths), "--method", "lstsq"])  # no --fit
    short = _write(tmp_path / "short.csv", {"v00.mp4": 1.0})
    assert ensemble.main([str(paths[0]), str(short)]) == 2
    assert "short.csv lacks 39 video(s)" in capsys.readouterr().err


def test_without_pair_sheets_the_table_has_correlations_and_no_final():
    import scipy.stats

    truth = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    pred = {"a": 0.1, "b": 0.3, "c": 0.2, "d": 0.9, "extra": 5.0}
    (row,) = ensemble.score_table({"m": pred}, truth, Pairs((), (Pair("a", "d", 2),))).values()
    assert np.isnan(row["final"]) and np.isnan(row["rank1"]) and row["rank2"] == 1.0 and row["n"] == 4
    assert "plcc_logistic" in row  # fitted, or NaN where 4 points do not fit the logistic
    assert row["srocc"] == pytest.approx(scipy.stats.spearmanr([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.9])[0])
