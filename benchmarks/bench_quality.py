"""Part 4: model quality against the generator's ground truth.

The generator records every impression's true probabilities, so the best achievable
ranking per task is known: the oracle scores each test-day impression of
``gold/examples`` (joined to ``<truth>/impressions`` on impression_id = event_id) with

    click        p_click
    add_to_cart  p_click x p_add_to_cart_given_click
    purchase     p_click x p_purchase_given_click

and a model's AUC is reported as a share of the oracle's lift over 0.5, on the same rows.

- Architectures: single_task, shared_bottom, mmoe, ple, esmm, each against single-task
  (the ratio is the multi-task gain), and a LightGBM model per binary task on the same
  gold features and split (the strong non-neural baseline; ``pip install -e .[bench]``).
  Every AUC comes with its test positives and a 95 % interval over seeds x bootstrap
  resamples of the test rows (the same resamples for every model), so a difference is
  only claimed where the intervals say so.
- Transfer: a model trained on other markets warm-starts a small target-market training
  set, against a cold start on the same rows (``mtl_model.transfer.warm_start``).
- Distillation: a small student trained against the configured architecture's model
  (``mtl_model.distill.compare_student_teacher``: parameters, forward time, AUC kept).

Training here is in-process with ``mtl_model.loop.fit`` (no Ray) on rows read from
``gold/examples`` with ``Lake.read_arrow``; every run is one seed, and every figure is a
median over ``repeats`` seeds. Every run trains with the configured defaults (e.g.
``train.weighting.child_loss_scale``) except the small-data settings ``run`` names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch
from sklearn.metrics import roc_auc_score

from benchmarks.context import BenchContext
from benchmarks.harness import Figure, PartResult, lift_share, median, median_or_nan, paired_ratio
from jobs.config import PipelineConfig
from mtl_model.architectures import MultiTaskModel, build_model
from mtl_model.config import ModelConfig, TrainConfig
from mtl_model.features import Batch
from mtl_model.streaming import BatchColumns, to_tensors
from mtlrec.feature_spec import FeatureSpec
from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake
from mtlrec.tables import GOLD_EXAMPLES

TITLE = "Quality against the generator's ground truth (in-process training, no Ray)"
ARCHITECTURES = ("single_task", "shared_bottom", "mmoe", "ple", "esmm")
ORACLE_TASKS = ("click", "add_to_cart", "purchase")
SPARSE_TASKS = ("add_to_cart", "purchase")
BOOTSTRAP_DRAWS = 200
LIGHTGBM = "lightgbm"


def oracle_scores(truth: pa.Table) -> dict[str, np.ndarray]:
    """Each task's true unconditional probability from the truth columns."""
    p_click = truth.column("p_click").to_numpy()
    return {
        "click": p_click,
        "add_to_cart": p_click * truth.column("p_add_to_cart_given_click").to_numpy(),
        "purchase": p_click * truth.column("p_purchase_given_click").to_numpy(),
    }


@dataclass
class Split:
    """One split's rows as tensors (the batch contract) and, for test rows, the oracle."""

    batch: Batch
    market: np.ndarray
    oracle: dict[str, np.ndarray] | None = None

    @property
    def rows(self) -> int:
        return len(self.market)

    def take(self, index: np.ndarray) -> Split:
        picked = torch.from_numpy(index)
        oracle = None if self.oracle is None else {k: v[index] for k, v in self.oracle.items()}
        return Split({k: v[picked] for k, v in self.batch.items()}, self.market[index], oracle)

    def of_markets(self, markets: list[str]) -> Split:
        return self.take(np.flatnonzero(np.isin(self.market, markets)))

    def batches(self, size: int, seed: int | None = None) -> list[Batch]:
        order = np.arange(self.rows)
        if seed is not None:
            order = np.random.default_rng(seed).permutation(self.rows)
        return [
            {k: v[torch.from_numpy(order[i : i + size])] for k, v in self.batch.items()}
            for i in range(0, self.rows, size)
        ]


def read_splits(lake: Lake, snapshot: GoldSnapshot, truth_root: Path) -> dict[str, Split]:
    """The snapshot's train, val and test rows (its version of gold/examples)."""
    columns = BatchColumns.from_spec(snapshot.spec)
    wanted = [*columns.names(), "impression_id", "market", "split"]
    table = lake.read_arrow(GOLD_EXAMPLES, snapshot.version(GOLD_EXAMPLES), columns=wanted)
    splits: dict[str, Split] = {}
    for name in ("train", "val", "test"):
        part = table.filter(pc.equal(table.column("split"), name))
        if part.num_rows == 0:
            raise ValueError(f"{GOLD_EXAMPLES} has no rows of split={name}")
        chunk = {n: part.column(n).to_numpy(zero_copy_only=False) for n in columns.names()}
        market = np.asarray(part.column("market").fill_null("").to_numpy(zero_copy_only=False))
        split = Split(dict(to_tensors(chunk, columns)), market)  # type: ignore[arg-type]
        if name == "test":
            split = _with_oracle(split, part.column("impression_id"), truth_root)
        splits[name] = split
    return splits


def _with_oracle(split: Split, impression_ids: pa.ChunkedArray, truth_root: Path) -> Split:
    """Test rows that have a truth record, with their oracle scores (same row order)."""
    truth = pads.dataset(truth_root / "impressions", format="parquet", partitioning="hive")
    truth_table = truth.to_table(
        columns=["event_id", "p_click", "p_add_to_cart_given_click", "p_purchase_given_click"]
    )
    position = pc.index_in(impression_ids, value_set=truth_table.column("event_id"))
    found = np.asarray(position.is_valid().to_numpy(zero_copy_only=False))
    kept = split.take(np.flatnonzero(found))
    rows = truth_table.take(pa.array(position.to_numpy(zero_copy_only=False)[found], pa.int64()))
    kept.oracle = oracle_scores(rows)
    return kept


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def predictions(model: MultiTaskModel, split: Split, size: int) -> dict[str, np.ndarray]:
    model.eval()
    parts: dict[str, list[np.ndarray]] = {t: [] for t in ORACLE_TASKS}
    with torch.no_grad():
        for batch in split.batches(size):
            out = model.predict(batch)
            for task in ORACLE_TASKS:
                parts[task].append(out[task].float().numpy())
    return {t: np.concatenate(v) for t, v in parts.items()}


def label_column(spec: FeatureSpec, task: str) -> str:
    return spec.task(task).label_column


def read_inputs(cfg: PipelineConfig) -> tuple[FeatureSpec, dict[str, Split], dict[str, float]]:
    """The newest gold build's spec, its train/val/test splits and the oracle's test AUCs."""
    lake = Lake.from_config(cfg.lake)
    snapshot = GoldSnapshot.resolve(lake)
    splits = read_splits(lake, snapshot, Path(cfg.generator.truth_root))
    return snapshot.spec, splits, oracle_aucs(snapshot.spec, splits["test"])


def oracle_aucs(spec: FeatureSpec, test: Split) -> dict[str, float]:
    assert test.oracle is not None
    return {
        t: auc(test.batch[label_column(spec, t)].numpy(), test.oracle[t]) for t in ORACLE_TASKS
    }


def lift_shares(
    model: MultiTaskModel, spec: FeatureSpec, test: Split, oracle: dict[str, float], size: int
) -> dict[str, float]:
    scores = predictions(model, test, size)
    return {
        t: lift_share(auc(test.batch[label_column(spec, t)].numpy(), scores[t]), oracle[t])
        for t in ORACLE_TASKS
    }


def bootstrap_rows(rows: int, draws: int, seed: int = 0) -> np.ndarray:
    """``[draws, rows]`` row indices drawn with replacement; shared by every model compared."""
    return np.random.default_rng(seed).integers(0, rows, size=(draws, rows))


def auc_interval(
    labels: np.ndarray, runs: list[np.ndarray], resamples: np.ndarray
) -> tuple[float, float]:
    """95 % interval of the AUC over every run (seed) x bootstrap resample of the test rows.

    The spread covers both the training noise (seeds) and the test set's sampling noise
    (a few dozen purchases on the quick test day). A resample holding one class only has
    no AUC and is left out.
    """
    values = [
        auc(labels[rows], scores[rows]) for scores in runs for rows in resamples
    ]
    finite = [v for v in values if not np.isnan(v)]
    if not finite:
        return (float("nan"), float("nan"))
    low, high = np.percentile(finite, [2.5, 97.5])
    return (float(low), float(high))


@dataclass
class TaskScores:
    """One model family's test scores per task, one array per seed (row order of ``test``)."""

    runs: dict[str, list[np.ndarray]]

    @classmethod
    def empty(cls) -> TaskScores:
        return cls({t: [] for t in ORACLE_TASKS})

    def add(self, scores: dict[str, np.ndarray]) -> None:
        for task in ORACLE_TASKS:
            self.runs[task].append(scores[task])

    def aucs(self, labels: dict[str, np.ndarray]) -> dict[str, list[float]]:
        return {t: [auc(labels[t], s) for s in self.runs[t]] for t in ORACLE_TASKS}


Init = Callable[[MultiTaskModel], None]


def train(
    spec: FeatureSpec,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_split: Split,
    val_split: Split,
    seed: int,
    *,
    init: Init | None = None,
    teacher: MultiTaskModel | None = None,
) -> MultiTaskModel:
    """``mtl_model.loop.fit`` with early stopping on val; the best epoch's weights."""
    from mtl_model.loop import EpochBatches, fit

    torch.manual_seed(seed)
    model = build_model(spec, model_cfg)
    if init is not None:
        init(model)
    cfg = train_cfg.model_copy(update={"seed": seed})
    steps = max(1, -(-train_split.rows // cfg.batch_size))
    fit(
        model,
        lambda epoch: EpochBatches(
            train_split.batches(cfg.batch_size, seed=seed * 1_000_003 + epoch)
        ),
        lambda: val_split.batches(cfg.eval_batch_size),
        spec,
        cfg,
        steps_per_epoch=steps,
        teacher=teacher,
    )
    return model


def run(ctx: BenchContext) -> PartResult:
    profile = ctx.profile
    # The laptop-scale training set is a few tens of thousands of rows: the pipeline's
    # default batch (1024) and warm-up (100 steps) would leave every model inside its
    # warm-up, barely moved from its random initialisation. Small batches, a short warm-up.
    cfg = ctx.shared_config(
        [
            f"train.epochs={profile.quality_epochs}",
            "train.batch_size=256",
            "train.lr=0.003",
            "train.schedule.warmup_steps=20",
        ]
    )
    spec, splits, oracle = read_inputs(cfg)
    test = splits["test"]
    seeds = list(range(profile.repeats))
    threads = torch.get_num_threads()
    torch.set_num_threads(profile.quality_torch_threads)
    result = PartResult(key="4", title=TITLE)
    try:
        models = _architectures(ctx, cfg, spec, splits, oracle, seeds, result)
        for name, section in (
            ("transfer", lambda: _transfer(ctx, cfg, spec, splits, seeds, result)),
            ("distillation", lambda: _distillation(ctx, cfg, spec, splits, models, seeds, result)),
        ):
            try:
                section()
            except Exception as exc:  # the architecture figures above stand on their own
                result.notes.append(f"{name} not run: failed: {type(exc).__name__}: {exc}")
    finally:
        torch.set_num_threads(threads)
    labels = {t: int(test.batch[label_column(spec, t)].sum()) for t in ORACLE_TASKS}
    result.notes += [
        "Training is in-process with mtl_model.loop.fit (no Ray) on gold/examples rows read "
        f"with Lake.read_arrow: {splits['train'].rows:,} train, {splits['val'].rows:,} val, "
        f"{test.rows:,} test rows; {cfg.train.epochs} epoch(s) max, early stopping on "
        f"{cfg.train.early_stopping.metric}; one seed per run, seeds {seeds}.",
        "Oracle AUC on the test day: "
        + ", ".join(f"{t} {oracle[t]:.4f} ({labels[t]:,} positives)" for t in ORACLE_TASKS)
        + ". Share = (AUC - 0.5) / (oracle AUC - 0.5) on the same rows.",
        "Ratios pair runs by seed: each seed's share over the baseline's share with that seed "
        "(against single_task: the multi-task gain). n/a: the AUC is undefined in some run "
        "(rows of one class only).",
        f"AUC [interval]: median over seeds, and the 2.5-97.5 percentiles over {len(seeds)} "
        f"seeds x {BOOTSTRAP_DRAWS} bootstrap resamples of the test rows (the same resamples "
        "for every model); a difference is real only where the intervals do not overlap.",
    ]
    return result


def _architectures(
    ctx: BenchContext,
    cfg: PipelineConfig,
    spec: FeatureSpec,
    splits: dict[str, Split],
    oracle: dict[str, float],
    seeds: list[int],
    result: PartResult,
) -> dict[int, MultiTaskModel]:
    """Every architecture x seed, then LightGBM per task; one row per model and task.

    Returns the configured architecture's model per seed (the distillation teacher).
    """
    test = splits["test"]
    labels = {t: test.batch[label_column(spec, t)].numpy() for t in ORACLE_TASKS}
    scores: dict[str, TaskScores] = {}
    kept: dict[int, MultiTaskModel] = {}
    for arch in ARCHITECTURES:
        scores[arch] = TaskScores.empty()
        model_cfg = cfg.model.model_copy(update={"architecture": arch})
        for seed in seeds:
            ctx.log(f"part 4: {arch}, seed {seed}")
            model = train(spec, model_cfg, cfg.train, splits["train"], splits["val"], seed)
            scores[arch].add(predictions(model, test, cfg.train.eval_batch_size))
            if arch == cfg.model.architecture:
                kept[seed] = model
    try:
        scores[LIGHTGBM] = _lightgbm_scores(ctx, spec, splits, seeds)
    except ImportError as exc:
        result.notes.append(
            f"lightgbm not run: {exc} (a benchmark dependency: pip install -e '.[bench]')"
        )
    resamples = bootstrap_rows(test.rows, BOOTSTRAP_DRAWS)
    aucs = {name: family.aucs(labels) for name, family in scores.items()}
    shares = {
        name: {t: [lift_share(a, oracle[t]) for a in values[t]] for t in ORACLE_TASKS}
        for name, values in aucs.items()
    }
    for name, family in scores.items():
        for task in ORACLE_TASKS:
            against_single = name != "single_task"
            base = shares["single_task"][task]
            low, high = auc_interval(labels[task], family.runs[task], resamples)
            result.figures.append(
                Figure(
                    name=f"{name}: {task} AUC, share of oracle lift",
                    value=median_or_nan(shares[name][task]),
                    unit="share",
                    runs=len(seeds),
                    baseline="single_task" if against_single else "",
                    baseline_value=median_or_nan(base) if against_single else None,
                    ratio=paired_ratio(shares[name][task], base) if against_single else None,
                    note=f"AUC {median_or_nan(aucs[name][task]):.3f} "
                    f"[{low:.3f}, {high:.3f}], {int(labels[task].sum()):,} positives",
                )
            )
    default = cfg.model.architecture
    if LIGHTGBM in shares and default in shares:
        for task in ORACLE_TASKS:
            result.figures.append(
                Figure(
                    name=f"{default} (default) over lightgbm: {task} share of oracle lift",
                    value=median_or_nan(shares[default][task]),
                    unit="share",
                    runs=len(seeds),
                    baseline="lightgbm, same features and split",
                    baseline_value=median_or_nan(shares[LIGHTGBM][task]),
                    ratio=paired_ratio(shares[default][task], shares[LIGHTGBM][task]),
                )
            )
    return kept


def feature_matrix(spec: FeatureSpec, split: Split) -> tuple[np.ndarray, list[str], list[str]]:
    """``[rows, features]`` float32 of the model's inputs: categorical indices (LightGBM
    splits them as categories), dense and pretrained-embedding columns; their names, and
    the categorical ones."""
    categorical = [f.name for f in spec.categorical]
    numeric = [f.name for f in spec.dense]
    for emb in spec.embeddings:
        numeric.extend(emb.columns)
    names = [*categorical, *numeric]
    matrix = np.column_stack([split.batch[n].numpy().astype(np.float32) for n in names])
    return matrix, names, categorical


def _lightgbm_scores(
    ctx: BenchContext, spec: FeatureSpec, splits: dict[str, Split], seeds: list[int]
) -> TaskScores:
    """One LightGBM binary classifier per task and seed on the unconditional labels of the
    same gold rows; early stopping on val AUC. Seeds vary row and feature subsampling."""
    import lightgbm as lgb

    train_x, names, categorical = feature_matrix(spec, splits["train"])
    val_x, _, _ = feature_matrix(spec, splits["val"])
    test_x, _, _ = feature_matrix(spec, splits["test"])
    family = TaskScores.empty()
    for seed in seeds:
        ctx.log(f"part 4: lightgbm, seed {seed}")
        scores: dict[str, np.ndarray] = {}
        for task in ORACLE_TASKS:
            column = label_column(spec, task)
            params = {
                "objective": "binary",
                "metric": "auc",
                "learning_rate": 0.05,
                "num_leaves": 31,
                "min_data_in_leaf": 50,
                "feature_fraction": 0.8,
                "bagging_fraction": 0.8,
                "bagging_freq": 1,
                "seed": seed,
                "num_threads": ctx.profile.quality_torch_threads,
                "verbose": -1,
            }
            train_set = lgb.Dataset(
                train_x, splits["train"].batch[column].numpy(), feature_name=names,
                categorical_feature=categorical, free_raw_data=False,
            )
            val_set = lgb.Dataset(
                val_x, splits["val"].batch[column].numpy(), reference=train_set
            )
            booster = lgb.train(
                params, train_set, num_boost_round=1000, valid_sets=[val_set],
                callbacks=[lgb.early_stopping(50, verbose=False)],
            )
            scores[task] = np.asarray(
                booster.predict(test_x, num_iteration=booster.best_iteration)
            )
        family.add(scores)
    return family


def _transfer(
    ctx: BenchContext,
    cfg: PipelineConfig,
    spec: FeatureSpec,
    splits: dict[str, Split],
    seeds: list[int],
    result: PartResult,
) -> None:
    from mtl_model.artifact import artifact_from_model
    from mtl_model.transfer import warm_start

    profile = ctx.profile
    sources, target = profile.transfer_source_markets, profile.transfer_target_market
    source_train = splits["train"].of_markets(sources)
    source_val = splits["val"].of_markets(sources)
    target_all = splits["train"].of_markets([target])
    target_val = splits["val"].of_markets([target])
    target_test = splits["test"].of_markets([target])
    if min(source_train.rows, target_all.rows, target_val.rows, target_test.rows) == 0:
        result.notes.append(
            f"transfer not run: no rows for markets {sources} or {target!r} in some split"
        )
        return
    pick = np.sort(
        np.random.default_rng(0).permutation(target_all.rows)[: profile.transfer_target_rows]
    )
    target_train = target_all.take(pick)
    oracle = oracle_aucs(spec, target_test)
    ctx.log(f"part 4: transfer source model on markets {sources}")
    source_model = train(spec, cfg.model, cfg.train, source_train, source_val, seed=0)
    artifact = artifact_from_model(source_model, spec, cfg.model)

    def warm(model: MultiTaskModel) -> None:
        warm_start(model, artifact, cfg.train.transfer)

    shares: dict[str, dict[str, list[float]]] = {
        side: {t: [] for t in ORACLE_TASKS} for side in ("warm", "cold")
    }
    for seed in seeds:
        for side, init in (("warm", warm), ("cold", None)):
            ctx.log(f"part 4: transfer {side} start on {target_train.rows:,} {target} rows, "
                    f"seed {seed}")
            model = train(spec, cfg.model, cfg.train, target_train, target_val, seed, init=init)
            for task, share in lift_shares(
                model, spec, target_test, oracle, cfg.train.eval_batch_size
            ).items():
                shares[side][task].append(share)
    for task in ORACLE_TASKS:
        result.figures.append(
            Figure(
                name=f"transfer {'+'.join(sources)} -> {target}, warm start: {task} share of "
                "oracle lift",
                value=median_or_nan(shares["warm"][task]),
                unit="share",
                runs=len(seeds),
                baseline=f"cold start, same {target_train.rows:,} {target} rows",
                baseline_value=median_or_nan(shares["cold"][task]),
                ratio=paired_ratio(shares["warm"][task], shares["cold"][task]),
                note=f"{target} test rows {target_test.rows:,}, "
                f"{int(target_test.batch[label_column(spec, task)].sum()):,} positives",
            )
        )


def _distillation(
    ctx: BenchContext,
    cfg: PipelineConfig,
    spec: FeatureSpec,
    splits: dict[str, Split],
    teachers: dict[int, MultiTaskModel],
    seeds: list[int],
    result: PartResult,
) -> None:
    from mtl_model.distill import compare_student_teacher

    profile = ctx.profile
    student_cfg = cfg.model.model_copy(
        update={
            "expert_hidden": profile.student_expert_hidden,
            "num_experts": profile.student_num_experts,
            "tower_hidden": profile.student_tower_hidden,
            "embedding_dim": profile.student_embedding_dim,
        }
    )
    reports = []
    test_batches = splits["test"].batches(cfg.train.eval_batch_size)
    for seed in seeds:
        ctx.log(f"part 4: distilling a student from the {cfg.model.architecture} teacher, "
                f"seed {seed}")
        teacher = teachers[seed]
        student = train(
            spec, student_cfg, cfg.train, splits["train"], splits["val"], seed, teacher=teacher
        )
        reports.append(
            compare_student_teacher(teacher, student, test_batches, spec, profile.repeats)
        )
    arch = cfg.model.architecture
    result.figures.append(
        Figure(
            name=f"distilled student ({arch}): parameters",
            value=median([float(r.student_parameters) for r in reports]),
            unit="parameters",
            runs=len(reports),
            baseline=f"teacher ({arch}, configured size)",
            baseline_value=median([float(r.teacher_parameters) for r in reports]),
            ratio=median([r.parameter_ratio for r in reports]),
        )
    )
    result.figures.append(
        Figure(
            name="distilled student: forward time on the test day",
            value=median([r.forward_time_ratio for r in reports]),
            unit="ratio",
            runs=len(reports),
            baseline="teacher, timed alternately on the same batches",
            note="compare_student_teacher forward_time_ratio",
        )
    )
    for task in ORACLE_TASKS:
        result.figures.append(
            Figure(
                name=f"distilled student: {task} AUC",
                value=median_or_nan([r.student_auc[task] for r in reports]),
                unit="AUC",
                runs=len(reports),
                baseline="teacher, same test rows",
                baseline_value=median_or_nan([r.teacher_auc[task] for r in reports]),
                ratio=median_or_nan([r.auc_kept[task] for r in reports]),
                note="ratio = AUC kept: the student's lift over 0.5 / the teacher's",
            )
        )
