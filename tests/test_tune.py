"""jobs.tune: the search config is checked before anything starts; a small search on local
Ray writes a best_config.yaml that jobs.train's loader accepts and a trials.json listing
every trial.

The lake is a small funnel ``gold/examples`` (tests/reliability/training.py), so the
trials run the train job's real path (Ray Train, Petastorm shards, loop.fit) without a
Spark build.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from reliability.harness import ROOT, job_command, job_env
from reliability.training import write_examples

from jobs.config import PipelineConfig
from mtl_model.tune import TrialSummary, apply_values, best_trial, summarise
from mtlrec.config import DEFAULT_CONFIG, ConfigError, load_config

SMALL_TRIALS = (
    "ray.num_workers=1",
    "ray.cpus_per_worker=1",
    "model.text_projection_dim=4",
    "train.batch_size=256",
    "train.eval_batch_size=1024",
    "train.schedule.warmup_steps=5",
    "run.shuffle_buffer_rows=512",
    "tune.num_samples=2",
    "tune.asha.max_epochs=2",
    "tune.asha.grace_epochs=1",
    "tune.seed=3",
    # Two values that must reach the trials and the written config.
    'tune.search_space={"train.lr": {"kind": "loguniform", "low": 0.001, "high": 0.02},'
    ' "model.num_experts": {"kind": "choice", "values": [2, 3]}}',
)


def _space(entries: str) -> list[str]:
    return [f"tune.search_space={entries}"]


# ----------------------------------------------------------------- config, no Ray
def test_shipped_search_space_loads_and_names_model_and_train_paths() -> None:
    cfg = load_config(PipelineConfig, DEFAULT_CONFIG)
    assert cfg.tune.metric == "val/click/auc" and cfg.tune.mode == "max"
    assert "train.lr" in cfg.tune.search_space
    assert all(p.split(".")[0] in {"model", "train"} for p in cfg.tune.search_space)


@pytest.mark.parametrize(
    ("entries", "named"),
    [
        ('{"train.lrr": {"kind": "choice", "values": [0.1]}}', "train.lrr: unknown key"),
        ('{"model.dropout": {"kind": "choice", "values": [0.1, 1.5]}}', "1.5 is refused"),
        ('{"model.num_experts": {"kind": "uniform", "low": 2, "high": 8}}', "does not take"),
        ('{"train.epochs": {"kind": "choice", "values": [2]}}', "cannot be searched"),
        ('{"lake.root": {"kind": "choice", "values": ["x"]}}', "a path into model or train"),
        ('{"train.lr": {"kind": "loguniform", "low": 0.1, "high": 0.01}}', "must be below"),
    ],
)
def test_a_search_space_entry_the_config_refuses_is_a_config_error_naming_it(
    entries: str, named: str
) -> None:
    with pytest.raises(ConfigError, match="tune") as error:
        load_config(PipelineConfig, DEFAULT_CONFIG, _space(entries))
    assert named in str(error.value)


def test_a_range_over_a_float_inside_a_mapping_is_accepted() -> None:
    cfg = load_config(
        PipelineConfig,
        DEFAULT_CONFIG,
        _space(
            '{"train.weighting.task_weights.purchase": {"kind": "uniform", "low": 0.1, "high": 1}}'
        ),
    )
    assert list(cfg.tune.search_space) == ["train.weighting.task_weights.purchase"]


def test_values_land_at_their_dotted_paths_without_touching_the_base() -> None:
    base = {"train": {"lr": 0.001, "weighting": {"strategy": "fixed"}}, "model": {}}
    merged = apply_values(base, {"train.weighting.strategy": "dwa", "model.num_experts": 2})
    assert merged["train"]["weighting"]["strategy"] == "dwa"
    assert merged["model"]["num_experts"] == 2 and merged["train"]["lr"] == 0.001
    assert base["train"]["weighting"]["strategy"] == "fixed"


def test_the_best_trial_is_the_best_epoch_of_a_finished_trial() -> None:
    def trial(name: str, history: list[float | None], error: str | None = None) -> TrialSummary:
        return summarise(name, {}, history, mode="max", stopped_early=False, error=error)

    trials = [
        trial("a", [0.60, 0.70, 0.65]),  # best 0.70 at epoch 1, last 0.65
        trial("b", [0.68]),
        trial("c", [0.90], error="RuntimeError: worker died"),  # failed: never the winner
        trial("d", [None]),  # metric undefined: never the winner
    ]
    assert (trials[0].best, trials[0].best_epoch, trials[0].last) == (0.70, 1, 0.65)
    winner = best_trial(trials, "max")
    assert winner is not None and winner.trial_id == "a"
    assert best_trial(trials[2:], "max") is None
    errors = [
        summarise(name, {}, history, mode="min", stopped_early=False, error=None)
        for name, history in (("x", [0.5, 0.3]), ("y", [0.2, 0.4]))
    ]
    assert (errors[1].best, errors[1].best_epoch) == (0.2, 0)
    lowest = best_trial(errors, "min")
    assert lowest is not None and lowest.trial_id == "y"


# ----------------------------------------------------------------------- the job
def _tune(cwd: Path, overrides: list[str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        job_command("tune", overrides=overrides),
        cwd=cwd,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_search_space_path_exits_2_writing_nothing(tmp_path: Path) -> None:
    proc = _tune(
        tmp_path,
        [
            f"lake.root={tmp_path / 'lake'}",
            f"run.storage_path={tmp_path / 'runs'}",
            *_space('{"model.num_expertz": {"kind": "choice", "values": [2]}}'),
        ],
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.num_expertz: unknown key" in proc.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written on a bad config"


def test_missing_gold_exits_2_writing_nothing(tmp_path: Path) -> None:
    (tmp_path / "lake").mkdir()
    proc = _tune(
        tmp_path, [f"lake.root={tmp_path / 'lake'}", f"run.storage_path={tmp_path / 'runs'}"]
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("tune: ")
    assert not (tmp_path / "runs").exists()
    assert not any((tmp_path / "lake").iterdir())


@pytest.mark.ray
@pytest.mark.slow
def test_two_trial_search_writes_a_best_config_jobs_train_loads_and_every_trial(
    tmp_path: Path,
) -> None:
    lake_root = tmp_path / "lake"
    write_examples(
        lake_root,
        {
            "train": [("2026-10-01", 3000), ("2026-10-02", 3000)],
            "val": [("2026-10-03", 2000)],
            "test": [("2026-10-04", 2000)],
        },
        {"train": 16 * 1024, "val": 64 * 1024, "test": 64 * 1024},
    )
    runs = tmp_path / "runs"
    proc = _tune(
        ROOT,
        [
            f"lake.root={lake_root}",
            f"run.storage_path={runs}",
            "tune.name=search",
            *SMALL_TRIALS,
        ],
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    search = runs / "search"
    report = json.loads((search / "trials.json").read_text())
    trials = report["trials"]
    assert len(trials) == 2 and len({t["trial_id"] for t in trials}) == 2
    for trial in trials:
        assert trial["status"] == "finished", trial
        assert set(trial["values"]) == {"train.lr", "model.num_experts"}
        assert 1 <= trial["epochs"] <= 2 and len(trial["history"]) == trial["epochs"]
        assert trial["best"] == max(v for v in trial["history"] if v is not None)
        # Each trial trained through the train job's run: Ray Train checkpoints per epoch.
        assert list((search / "trials" / trial["trial_id"]).glob("checkpoint_*"))
    winner = max(trials, key=lambda t: t["best"])
    assert report["best_trial"] == winner["trial_id"]
    assert "trial 2/2" in proc.stderr  # one progress line per finished trial

    best = load_config(PipelineConfig, search / "best_config.yaml")  # as jobs.train loads it
    assert best.train.lr == winner["values"]["train.lr"]
    assert best.model.num_experts == winner["values"]["model.num_experts"]
    assert best.train.epochs == 2  # the trials' horizon
    assert best.lake.root == str(lake_root)
    header = (search / "best_config.yaml").read_text().splitlines()[0]
    assert winner["trial_id"] in header
