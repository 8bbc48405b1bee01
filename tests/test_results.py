"""Reading many runs: ``plot`` and ``compare`` on hand-made run directories, and the IQM and
stratified-bootstrap estimators against their definitions (rliable 1.2.0's, which this project
cannot import: its ``arch`` dependency fails on pandas 3)."""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot
import numpy as np
import pytest
from scipy import stats as scipy_stats

from diffmaxent import results, runs, stats
from diffmaxent.cli import main
from diffmaxent.envs.multigoal import GOAL_POSITIONS, goal_statistics
from diffmaxent.envs.multigoal import plot_trajectories as plot_multigoal


def _run(root: Path, algo: str, seed: int, returns: list[float], env: str = "Pendulum-v1",
         steps: tuple[int, ...] = (100, 200, 300)) -> Path:  # fmt: skip
    run_dir = root / f"{algo}-{env}-{seed}"
    run_dir.mkdir(parents=True)
    config = {"algo": algo, "env": env, "preset": "cpu", "seed": seed, "steps": steps[-1]}
    (run_dir / runs.CONFIG_FILE).write_text(json.dumps(config))
    (run_dir / runs.STATUS_FILE).write_text(json.dumps({"status": "complete"}))
    with (run_dir / runs.METRICS_FILE).open("w") as file:
        file.write("env_step,wall_seconds,eval_return_mean,eval_return_std,critic_loss\n")
        for i, (step, value) in enumerate(zip(steps, returns, strict=True)):
            file.write(f"{step},{10.0 * (i + 1) + seed},{value},0.5,\n")
    return run_dir


@pytest.fixture
def made(tmp_path):
    """Algorithm "a": 4 seeds with final returns 1, 2, 3, 10 (IQM 2.5, mean 4); "b": 2 seeds with
    final returns 5 and 7, one of them inside a group directory."""
    root = tmp_path / "runs"
    for seed, final in enumerate([1.0, 2.0, 3.0, 10.0]):
        _run(root, "a", seed, [0.0, final / 2, final])
    _run(root, "b", 0, [0.0, 1.0, 5.0])
    group = root / "group"
    group.mkdir()
    (group / runs.GROUP_FILE).write_text(json.dumps({"seeds": [1]}))
    _run(group, "b", 1, [0.0, 3.0, 7.0])
    return root


def _exact_bootstrap_percentiles(values: list[float]) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of the IQM over every resample (all n^n equally likely)."""
    samples = np.array(list(itertools.product(values, repeat=len(values))))
    iqms = stats.iqm_of_resamples(samples[:, :, None])
    order = np.argsort(iqms)
    cumulative = np.arange(1, len(iqms) + 1) / len(iqms)
    low = iqms[order][np.searchsorted(cumulative, 0.025)]
    high = iqms[order][np.searchsorted(cumulative, 0.975)]
    return float(low), float(high)


def test_iqm_is_the_25_percent_trimmed_mean_over_all_scores():
    rng = np.random.default_rng(0)
    for shape in [(4, 1), (5, 3), (10, 2), (7, 1)]:
        scores = rng.normal(size=shape)
        assert stats.iqm(scores) == pytest.approx(scipy_stats.trim_mean(scores, 0.25, axis=None))
    assert stats.iqm(np.array([[1.0], [2.0], [3.0], [10.0]])) == 2.5


def test_bootstrap_interval_matches_the_exact_resampling_distribution():
    # Two runs a < b: the resampled IQM is a, (a + b) / 2 or b with mass 1/4, 1/2, 1/4.
    assert stats.stratified_bootstrap_ci(np.array([[5.0], [7.0]]), reps=4_000) == (5.0, 7.0)
    values = [1.0, 2.0, 3.0, 10.0]
    low, high = stats.stratified_bootstrap_ci(np.array(values)[:, None], reps=20_000)
    exact_low, exact_high = _exact_bootstrap_percentiles(values)
    assert low == pytest.approx(exact_low, abs=0.26) and high == pytest.approx(exact_high, abs=0.26)


def test_bootstrap_is_stratified_by_task():
    # Task 0's runs all score 0 and task 1's all 1: every stratified resample keeps one of each
    # task per run, so the mean is exactly 0.5 (an unstratified resample would vary).
    scores = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    mean = lambda resamples: resamples.reshape(len(resamples), -1).mean(axis=1)  # noqa: E731
    assert stats.stratified_bootstrap_ci(scores, mean, reps=500) == (0.5, 0.5)


def test_compare_tabulates_final_returns_per_env_and_algorithm(made, capsys):
    assert main(["compare", str(made)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### Pendulum-v1\n")
    rows = [
        line for line in out.splitlines() if line.startswith("| a |") or line.startswith("| b |")
    ]
    a_row, b_row = rows
    a_low, a_high = _exact_bootstrap_percentiles([1.0, 2.0, 3.0, 10.0])
    assert a_row.startswith("| a | 4 | 300 | 2.5 [")
    # mean 4, std sqrt(12.5); mean wall 30 + 1.5 s over 300 steps: 105 ms per env step
    assert "| 4.0 ± 3.5 | 0m32s | 105.0 |" in a_row
    assert b_row == "| b | 2 | 300 | 6.0 [5.0, 7.0] | 6.0 ± 1.0 | 0m30s | 101.7 |"
    assert "goals reached" not in out  # no MultiGoal run

    assert main(["compare", str(made), "--format", "csv", "--reps", "20000"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["algo"] for row in table] == ["a", "b"]
    assert float(table[0]["iqm"]) == 2.5 and float(table[0]["mean"]) == 4.0
    assert float(table[0]["iqm_ci_low"]) == pytest.approx(a_low, abs=0.26)
    assert float(table[0]["iqm_ci_high"]) == pytest.approx(a_high, abs=0.26)
    assert (table[1]["iqm_ci_low"], table[1]["iqm_ci_high"]) == ("5.0", "7.0")
    assert table[1]["seeds"] == "2" and table[1]["env_steps"] == "300"
    assert float(table[0]["ms_per_env_step"]) == pytest.approx(105.0)
    assert table[0]["goals_reached"] == ""


def test_compare_counts_the_goals_each_multigoal_run_reached(tmp_path, capsys):
    # 7 episodes: a goal needs >= 0.7 of them, so one episode (goal 1 for seed 1) counts.
    _multigoal_run(tmp_path, "maxentdp", 1, [0, 0, 1, 2, 3, 3, -1])
    _multigoal_run(tmp_path, "maxentdp", 0, [2, 2, 2, 3, 3, 3, 3])
    _multigoal_run(tmp_path, "sac", 0, [2, 2, 2])
    _run(tmp_path, "sac", 1, [1.0, 2.0, 3.0], env="MultiGoal-v0")  # no summary yet
    assert main(["compare", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "goals reached (>= 10% of episodes), per seed |" in out
    assert "| maxentdp | 2 | 300 |" in out and out.splitlines()[4].endswith("| 2, 4 |")
    assert out.splitlines()[5].startswith("| sac |") and out.splitlines()[5].endswith("| - |")
    assert main(["compare", str(tmp_path), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["goals_reached"] for row in table] == ["2;4", ""]

    (tmp_path / "maxentdp-MultiGoal-v0-0" / runs.SUMMARY_FILE).write_text("{trunc")
    assert main(["compare", str(tmp_path)]) == 2
    assert "summary.json" in capsys.readouterr().err


def test_goals_reached_counts_the_goals_of_at_least_the_share_of_episodes(tmp_path):
    counts = {"goal_0": 10.0, "goal_1": 4.0, "goal_2": 30.0, "goal_3": 5.0}
    summary = {"episodes": 50, "goals_reached": 4.0, "goal_episodes": 49.0, **counts}
    runs.write_json(tmp_path / runs.SUMMARY_FILE, {"stochastic_episodes": summary})
    assert results.goals_reached(tmp_path, 0.1) == 3  # 4 of 50 episodes is below 10%
    assert results.goals_reached(tmp_path, 0.5) == 1  # goal 2: 30 of 50
    runs.write_json(tmp_path / runs.SUMMARY_FILE, {"eval_return_mean": 1.0})
    with pytest.raises(runs.DamagedFileError, match="no sampled episodes"):
        results.goals_reached(tmp_path, 0.1)


def test_curves_are_the_iqm_at_every_step(made):
    curves = results.curves(results.find_runs([made]), reps=1_000)
    a = next(curve for curve in curves if curve.algo == "a")
    np.testing.assert_array_equal(a.x, [100, 200, 300])
    np.testing.assert_allclose(a.iqm, [0.0, 1.25, 2.5])
    assert a.low[0] == a.high[0] == 0.0
    time_curves = results.curves(results.find_runs([made]), x="time", reps=100)
    np.testing.assert_allclose(time_curves[0].x, [11.5, 21.5, 31.5])  # mean wall time


def test_plot_writes_the_figures(made, tmp_path, capsys):
    figure = tmp_path / "curves.png"
    assert main(["plot", str(made), "--out", str(figure), "--x", "time"]) == 0
    assert "6 runs; figure" in capsys.readouterr().out
    assert matplotlib.image.imread(figure).ndim == 3


def _multigoal_run(root: Path, algo: str, seed: int, ends: list[int]) -> Path:
    """A MultiGoal-v0 run whose sampled episodes go straight from the start to the goals
    ``ends`` (one episode each; -1: an episode that stops short of every goal), with the
    ``trajectories.png`` and ``summary.json`` training writes."""
    run_dir = _run(root, algo, seed, [-300.0, -200.0, -150.0], env="MultiGoal-v0")
    last_infos = [{"goal": goal} for goal in ends]
    stops = [GOAL_POSITIONS[goal] if goal >= 0 else np.array([2.0, 2.0]) for goal in ends]
    trajectories = [np.linspace(np.zeros(2), stop, 8) for stop in stops]
    plot_multigoal(trajectories, str(run_dir / results.TRAJECTORIES_FILE), f"{algo} {seed}")
    summary = {"stochastic_episodes": {"episodes": len(ends), **goal_statistics(last_infos)}}
    (run_dir / runs.SUMMARY_FILE).write_text(json.dumps(summary))
    return run_dir


def test_trajectory_figure_has_a_column_per_algorithm_and_a_panel_per_run(tmp_path, capsys):
    # The Fig. 1 comparison: maxentdp on all four goals, sac on one, dime with two seeds.
    _multigoal_run(tmp_path / "mdp", "maxentdp", 0, [0, 0, 1, 2, 3, 3, -1])
    sac_run = _multigoal_run(tmp_path / "sac", "sac", 0, [2, 2, 2])
    for seed in (1, 0):
        _multigoal_run(tmp_path / "dime", "dime", seed, [seed, 3])
    _run(tmp_path / "dime", "dime", 5, [1.0, 2.0, 3.0], env="MultiGoal-v0")  # no trajectories

    records = results.find_runs([tmp_path / "mdp", tmp_path / "dime", tmp_path / "sac"])
    figure = results.trajectory_figure(records)
    axes = np.array(figure.axes).reshape(2, 3)  # a row per seed, a column per algorithm
    titles = [[axis.get_title() for axis in row] for row in axes]
    assert titles == [
        [
            "maxentdp, seed 0\nepisodes at +x: 2, -x: 1, +y: 1, -y: 2 (of 7)",
            "dime, seed 0\nepisodes at +x: 1, -x: 0, +y: 0, -y: 1 (of 2)",
            "sac, seed 0\nepisodes at +x: 0, -x: 0, +y: 3, -y: 0 (of 3)",
        ],
        ["", "dime, seed 1\nepisodes at +x: 0, -x: 1, +y: 0, -y: 1 (of 2)", ""],
    ]
    assert [len(axis.get_images()) for axis in axes.flat] == [1, 1, 1, 0, 1, 0]
    matplotlib.pyplot.close(figure)

    panels = tmp_path / "fig1.png"
    argv = ["plot", str(tmp_path / "mdp"), str(tmp_path / "dime"), str(tmp_path / "sac")]
    assert main([*argv, "--trajectories", "--out", str(panels)]) == 0
    assert "5 runs; figure" in capsys.readouterr().out
    height, width, _ = matplotlib.image.imread(panels).shape
    assert width > height  # three columns, two rows

    (sac_run / runs.SUMMARY_FILE).write_text(json.dumps({"eval_return_mean": -150.0}))
    assert main([*argv, "--trajectories", "--out", str(tmp_path / "no-counts.png")]) == 2
    assert "holds no goal counts" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "MISSING"], "is not a directory"),
        (["compare", "EMPTY"], "holds no run directory"),
        (["plot", "RUNS", "--out", "FIG.txt"], "name a .png, .pdf or .svg file"),
        (["plot", "RUNS", "--trajectories", "--out", "FIG.png"], "no run holds trajectories.png"),
        (["compare", "DAMAGED"], "line 3 is damaged"),
        (["compare", "NOEVAL"], "has no evaluation yet"),
    ],
)
def test_bad_input_ends_with_one_line(made, tmp_path, capsys, argv, message):
    (tmp_path / "EMPTY").mkdir()
    damaged = _run(tmp_path / "DAMAGED", "a", 0, [1.0, 2.0, 3.0])
    text = (damaged / runs.METRICS_FILE).read_text().replace("200,", "2x0,")
    (damaged / runs.METRICS_FILE).write_text(text)
    noeval = _run(tmp_path / "NOEVAL", "a", 0, [1.0, 2.0, 3.0])
    (noeval / runs.METRICS_FILE).write_text("env_step,wall_seconds,eval_return_mean\n5,1.0,\n")
    names = {"MISSING": tmp_path / "missing", "EMPTY": tmp_path / "EMPTY", "RUNS": made,
             "FIG.txt": tmp_path / "fig.txt", "FIG.png": tmp_path / "fig.png",
             "DAMAGED": tmp_path / "DAMAGED", "NOEVAL": tmp_path / "NOEVAL"}  # fmt: skip
    assert main([str(names.get(a, a)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "fig.txt").exists() and not (tmp_path / "fig.png").exists()
