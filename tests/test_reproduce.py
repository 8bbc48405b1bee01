"""``diffmaxent reproduce``: the published protocols, the runs they make and the comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffmaxent import reproduce, resolve_config, results, runs
from diffmaxent.cli import main
from diffmaxent.errors import UsageError

TINY_RETURN = """
tiny:
  title: "A tiny return protocol"
  runs:
    - {algo: sac, preset: cpu, envs: [Pendulum-v1]}
  steps: 400
  seeds: 2
  evaluation: "10 episodes"
  metric: return
  published:
    - {algo: sac, env: Pendulum-v1, mean: -200.0, std: 50.0, seeds: 2, step: 400}
  source: "made up for the test"
"""

TINY_GOALS = """
goals:
  title: "A tiny MultiGoal protocol"
  runs:
    - {algo: sac, preset: cpu, envs: [MultiGoal-v0]}
  steps: 200
  seeds: 1
  evaluation: "50 sampled episodes"
  metric: goals
  min_goal_share: 0.1
  published:
    - {algo: sac, env: MultiGoal-v0, goals: 1}
  source: "made up for the test"
"""


def _published(tmp_path, text):
    path = tmp_path / "published.yaml"
    path.write_text(text)
    return path


def test_every_shipped_protocol_resolves_and_names_its_published_runs():
    protocols = reproduce.load_protocols()
    assert set(protocols) == {"maxentdp-gym", "dime-dmc", "dime-gym", "multigoal"}
    for protocol in protocols.values():
        for algo, preset, env in protocol.runs:
            resolve_config(algo, env, preset=preset)
        planned = {(algo, env) for algo, _, env in protocol.runs}
        for published in protocol.published:
            assert (published.algo, published.env) in planned, protocol.name
    dog_run = protocols["dime-dmc"].published_for("dime", "dmc:dog-run")
    assert (dog_run.mean, dog_run.std, dog_run.seeds) == (637.4, 76.7, 10)
    assert protocols["maxentdp-gym"].published == () and protocols["maxentdp-gym"].missing
    assert {preset for _, preset, _ in protocols["maxentdp-gym"].runs} == {"official"}


def test_scale_shrinks_steps_random_steps_and_evaluation_interval(tmp_path):
    protocol = reproduce.load_protocols()["maxentdp-gym"]
    (first, *_) = reproduce.plan(protocol, tmp_path, seeds=2, scale=0.01)
    assert first.steps == 10_000 and first.seeds == (0, 1)
    assert first.overrides == {"eval_every": 100, "learning_starts": 100}
    (full, *_) = reproduce.plan(protocol, tmp_path)
    assert full.steps == 1_000_000 and len(full.seeds) == 5
    assert full.overrides == {"eval_every": 10_000, "learning_starts": 10_000}


def test_env_filter_keeps_only_the_named_envs_and_refuses_others(tmp_path):
    protocol = reproduce.load_protocols()["maxentdp-gym"]
    planned = reproduce.plan(protocol, tmp_path, envs=["paper/HalfCheetah-v3"])
    assert [run.env for run in planned] == ["paper/HalfCheetah-v3"]
    assert planned[0].group_dir == tmp_path / "maxentdp-paper-HalfCheetah-v3"
    with pytest.raises(UsageError, match="has no env 'HalfCheetah-v5'; its envs: paper/"):
        reproduce.plan(protocol, tmp_path, envs=["HalfCheetah-v5"])


@pytest.mark.parametrize("scale", [0, -0.5, 1.5, float("nan")])
def test_a_bad_scale_is_refused(tmp_path, scale):
    with pytest.raises(UsageError, match="--scale"):
        reproduce.plan(reproduce.load_protocols()["multigoal"], tmp_path, scale=scale)


def test_a_damaged_data_file_is_one_clear_error(tmp_path):
    with pytest.raises(runs.DamagedFileError, match="malformed"):
        reproduce.load_protocols(_published(tmp_path, "x: {title: t}\n"))
    with pytest.raises(runs.DamagedFileError):
        reproduce.load_protocols(_published(tmp_path, "x: [unclosed\n"))
    with pytest.raises(UsageError, match="unknown protocol 'nope'"):
        reproduce.get_protocol("nope")


def test_reproduce_trains_a_group_compares_and_keeps_it_on_a_rerun(tmp_path):
    data = _published(tmp_path, TINY_RETURN)
    out = tmp_path / "out"
    result = reproduce.reproduce("tiny", out=out, progress=False, published_file=data)
    group = out / "sac-Pendulum-v1"
    assert result.trained == [group] and result.kept == []
    finals = [
        [row for row in runs.read_metrics(group / f"seed{seed}") if row["eval_return_mean"]][-1][
            "eval_return_mean"
        ]
        for seed in (0, 1)
    ]
    table = result.comparison.read_text()
    assert f"{np.mean(finals):.1f} ± {np.std(finals):.1f}" in table
    assert "-200.0 ± 50.0 (2, 400)" in table
    assert f"{np.mean(finals) / -200.0:.2f}" in table
    assert result.figure.name == "curves.png" and result.figure.stat().st_size > 0

    metrics = (group / "seed0" / runs.METRICS_FILE).read_bytes()
    again = reproduce.reproduce("tiny", out=out, progress=False, published_file=data)
    assert again.trained == [] and again.kept == [group]
    assert (group / "seed0" / runs.METRICS_FILE).read_bytes() == metrics


def test_a_group_of_other_settings_is_refused_and_left_alone(tmp_path):
    data = _published(tmp_path, TINY_RETURN)
    out = tmp_path / "out"
    group = out / "sac-Pendulum-v1"
    group.mkdir(parents=True)
    recorded = {"algo": "sac", "env": "Pendulum-v1", "preset": "cpu", "steps": 400, "seeds": [7]}
    runs.write_group(group, recorded)
    with pytest.raises(UsageError, match="other settings"):
        reproduce.reproduce("tiny", out=out, progress=False, published_file=data)
    assert json.loads((group / runs.GROUP_FILE).read_text()) == recorded
    assert sorted(p.name for p in group.iterdir()) == [runs.GROUP_FILE]


def test_goal_protocol_writes_goals_per_seed_and_the_trajectories(tmp_path):
    data = _published(tmp_path, TINY_GOALS)
    result = reproduce.reproduce("goals", out=tmp_path / "out", progress=False, published_file=data)
    member = tmp_path / "out" / "sac-MultiGoal-v0" / "seed0"
    episodes = runs.read_json(member / runs.SUMMARY_FILE)["stochastic_episodes"]
    counts = [episodes[f"goal_{i}"] for i in range(4)]
    expected = sum(count >= 0.1 * episodes["episodes"] for count in counts)
    assert results.goals_reached(member, 0.1) == expected
    assert f"| sac (cpu) | MultiGoal-v0 | {expected} | 1 |" in result.comparison.read_text()
    assert result.figure.name == "trajectories.png" and result.figure.stat().st_size > 0


def test_cli_lists_the_protocols_and_needs_a_name(capsys):
    assert main(["reproduce", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in ("maxentdp-gym", "dime-dmc", "dime-gym", "multigoal"):
        assert listing.count(f"{name}: ") == 1
    assert main(["reproduce"]) == 2
    assert "name a protocol" in capsys.readouterr().err
    assert main(["reproduce", "multigoal", "--scale", "2"]) == 2
