"""Data-parallel training on Ray Train: the per-worker loop and the driver that launches it.

The driver (``run_training``) resolves the Delta snapshot of ``gold/examples``
once — the file list of each split, the table version, the feature spec — and
hands it to every worker, so all ranks read the same snapshot even if the table
moves on during the run. Each worker (``worker_loop``) then runs the plain
loop of ``mtl_model.loop`` over its Petastorm shard:

    for epoch:
        agree on a bounded step count (all-reduce MIN of every rank's batches)
        train_epoch(...)              # DDP (gloo on CPU, NCCL on GPU)
        verify the rows this rank read against its row groups' metadata
        evaluate on split=val         # metric state merged exactly across ranks
        checkpoint (rank 0) + ray.train.report(...)

Worker failures restart the group from the last reported checkpoint (Ray's
FailureConfig); ``resume`` restarts a stopped run from its newest readable
checkpoint, falling back to an older one if the newest is corrupt.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import ray
import ray.train
import torch
import torch.distributed as dist
from ray._private import services  # Ray's own address lookup (pinned 2.55.1)
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from mtl_model.architectures import MultiTaskModel, build_model
from mtl_model.artifact import artifact_from_model, load_artifact, save_artifact
from mtl_model.config import ModelConfig, TrainConfig
from mtl_model.features import Batch
from mtl_model.loop import (
    EarlyStopping,
    build_optimizer,
    build_scheduler,
    evaluate,
    train_epoch,
    unwrap,
)
from mtl_model.losses import build_weighting
from mtl_model.run_config import TrainRunConfig
from mtl_model.shards import list_row_groups
from mtl_model.streaming import BatchColumns, ShardStream, StreamSettings
from mtl_model.transfer import warm_start
from mtlrec.config import RayConfig
from mtlrec.errors import InputError
from mtlrec.feature_spec import FeatureSpec
from mtlrec.lake import Lake
from mtlrec.log import get_logger

EXAMPLES_TABLE = "gold/examples"
SPEC_TABLE = "gold/feature_spec"
STATE_FILE = "train_state.pt"
_log = get_logger("train")


@dataclass
class RunInputs:
    """What every worker needs, resolved once by the driver (JSON-serialisable)."""

    spec_json: str
    files: dict[str, list[str]]
    table_versions: dict[str, int]
    storage_options: dict[str, str] = field(default_factory=dict)


def resolve_inputs(lake: Lake, run_cfg: TrainRunConfig) -> RunInputs:
    """Pin the snapshot: spec, per-split file lists and Delta versions for this run."""
    if not lake.exists(EXAMPLES_TABLE) or not lake.exists(SPEC_TABLE):
        raise FileNotFoundError(
            f"{EXAMPLES_TABLE} and {SPEC_TABLE} must exist under {lake.root}: "
            "run `python -m jobs.build_features --stage all` first"
        )
    spec_rows = lake.read_arrow(SPEC_TABLE).to_pylist()
    latest = max(spec_rows, key=lambda row: str(row.get("created_at")))
    spec = FeatureSpec.from_json(latest["spec_json"])
    version = lake.version(EXAMPLES_TABLE)
    files = {
        split: lake.snapshot_files(EXAMPLES_TABLE, version=version, filters=[("split", "=", split)])
        for split in ("train", run_cfg.validation_split, run_cfg.test_split)
    }
    for split, split_files in files.items():
        if not split_files:
            raise ValueError(
                f"{EXAMPLES_TABLE} has no files for split={split} at version {version}: "
                "check features.gold's split days (training needs train, val and test days)"
            )
    return RunInputs(
        spec_json=spec.to_json(),
        files=files,
        table_versions={EXAMPLES_TABLE: version, SPEC_TABLE: lake.version(SPEC_TABLE)},
        storage_options=dict(lake.storage_options),
    )


def train_rows_for(inputs: RunInputs, num_workers: int) -> int:
    """Rows of the train split; raises when some rank would get no row group.

    Ranks train for the MIN of their batch counts (DDP must not hang on unequal shards),
    so one rank without a row group would make every rank train zero steps, silently.
    """
    groups = list_row_groups(inputs.files["train"], storage_options=inputs.storage_options)
    if len(groups) < num_workers:
        raise ValueError(
            f"{EXAMPLES_TABLE} split=train has {len(groups)} row group(s) for {num_workers} "
            "workers, so some workers would get no rows: rewrite it with a smaller "
            "lake.row_group_bytes or train with fewer ray.num_workers"
        )
    return sum(group.num_rows for group in groups)


# ---------------------------------------------------------------------- worker side
def _stream(
    inputs: RunInputs, split: str, bundle: RunConfigBundle, epoch: int, batch_size: int
) -> ShardStream:
    """This rank's shard of ``split`` for one epoch (train: reshuffled with the epoch's seed)."""
    ctx = ray.train.get_context()
    spec = FeatureSpec.from_json(inputs.spec_json)
    training = split == "train"
    return ShardStream(
        inputs.files[split],
        BatchColumns.from_spec(
            spec, id_columns=() if training else [bundle.train.gauc_group_column]
        ),
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        settings=StreamSettings(
            batch_size=batch_size,
            seed=bundle.train.seed * 1_000_003 + epoch,
            shuffle=training,
            shuffle_buffer_rows=bundle.run.shuffle_buffer_rows if training else 0,
            reader_pool=bundle.run.reader_pool,
            reader_workers=bundle.run.reader_workers,
            retries=bundle.run.read_retries,
        ),
        storage_options=inputs.storage_options,
    )


@dataclass
class RunConfigBundle:
    model: ModelConfig
    train: TrainConfig
    run: TrainRunConfig
    ray: RayConfig

    def to_json(self) -> str:
        return json.dumps({k: getattr(self, k).model_dump(mode="json") for k in asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> RunConfigBundle:
        data = json.loads(text)
        return cls(
            model=ModelConfig.model_validate(data["model"]),
            train=TrainConfig.model_validate(data["train"]),
            run=TrainRunConfig.model_validate(data["run"]),
            ray=RayConfig.model_validate(data["ray"]),
        )


def _log_step(epoch: int, line: str) -> None:
    _log.info("epoch %d %s", epoch, line)


def _min_across_ranks(value: int) -> int:
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def _quiet_worker_logs() -> None:
    """Petastorm 0.13 calls pyarrow APIs deprecated since 5.0 on every read (DESIGN.md 3)."""
    for module in ("petastorm", "pyarrow"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", message="schema_fields behavior has changed")
    # Ray Train logs every report's full metrics dict at INFO, under a logger named after
    # its source file; the loop prints its own one-line summary per epoch instead.
    from ray.train.v2._internal.execution import context as ray_train_context

    logging.getLogger(ray_train_context.__file__).setLevel(logging.WARNING)


def worker_loop(loop_config: dict[str, Any]) -> None:
    """The per-worker training function run by ``TorchTrainer`` on every rank."""
    _quiet_worker_logs()
    bundle = RunConfigBundle.from_json(loop_config["bundle"])
    inputs = RunInputs(**json.loads(loop_config["inputs"]))
    spec = FeatureSpec.from_json(inputs.spec_json)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    threads = bundle.run.torch_threads_per_worker or max(1, int(bundle.ray.cpus_per_worker))
    torch.set_num_threads(threads)
    torch.manual_seed(bundle.train.seed)

    core = build_model(spec, bundle.model)
    if bundle.train.transfer.source is not None:
        warm_start(core, load_artifact(bundle.train.transfer.source), bundle.train.transfer)
    teacher: MultiTaskModel | None = None
    if bundle.train.distill.teacher is not None:
        teacher = load_artifact(bundle.train.distill.teacher).build()
    weighting = build_weighting(core, bundle.train.weighting)
    stopper = EarlyStopping(bundle.train.early_stopping)
    history: list[dict[str, float]] = []
    start_epoch = 0

    # A worker-group restart within this run gets Ray's latest checkpoint; a resumed run
    # (``jobs.train --resume``) also gets the checkpoint the driver chose.
    resume_from = loop_config.get("resume_from")
    state = _latest_loadable_state(
        [ray.train.get_checkpoint(), Checkpoint(resume_from) if resume_from else None]
    )
    if state is not None:
        core.load_state_dict(state["model"])
        weighting.load_state_dict(state["weighting"])
        start_epoch = int(state["epoch"]) + 1
        history = json.loads(state["history"])
        stopper.best = state["best"] if state["best_epoch"] >= 0 else None
        stopper.best_epoch = int(state["best_epoch"])
        stopper.epochs_without_improvement = int(state["epochs_without_improvement"])

    model = ray.train.torch.prepare_model(core)
    device = next(core.parameters()).device
    weighting = weighting.to(device)
    if teacher is not None:
        teacher = teacher.to(device)
    optimizer = build_optimizer(model, weighting, bundle.train)
    steps_per_epoch = loop_config["steps_per_epoch"]
    scheduler = build_scheduler(optimizer, bundle.train, steps_per_epoch * bundle.train.epochs)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])

    best_model = state["best_model"] if state is not None else unwrap(model).state_dict()
    for epoch in range(start_epoch, bundle.train.epochs):
        started = time.monotonic()
        stream = _stream(inputs, "train", bundle, epoch, bundle.train.batch_size)
        steps = _min_across_ranks(stream.expected_batches())
        stats = train_epoch(
            model,
            cast(Iterable[Batch], stream),  # training batches carry tensors only
            optimizer,
            weighting,
            bundle.train,
            scheduler=scheduler,
            max_steps=steps,
            teacher=teacher,
            log=partial(_log_step, epoch) if rank == 0 else None,
        )
        rows_read = stream.finish()  # drains the rest of the shard and verifies the row count
        train_seconds = time.monotonic() - started
        metrics = _evaluate_split(model, inputs, bundle.run.validation_split, bundle, spec)
        stop = stopper.update(epoch, metrics)
        if stopper.best_epoch == epoch:
            best_model = {
                k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()
            }
        record = {
            "epoch": float(epoch),
            "train/loss": stats.loss,
            **{f"train/loss_{task}": value for task, value in stats.task_losses.items()},
            **{f"train/weight_{task}": value for task, value in stats.task_weights.items()},
            "train/samples_per_s": _sum_across_ranks(stats.examples) / max(train_seconds, 1e-9),
            "train/data_wait_share": stats.data_wait_share,
            "train/rows_read_rank0": float(rows_read),
            "lr": stats.lr,
            **{f"val/{key}": value for key, value in metrics.items()},
        }
        history.append(record)
        if rank == 0:
            _log.info(
                "epoch %d: %.0f samples/s, data wait %.0f%%, loss %.4f (%s), val %s",
                epoch,
                record["train/samples_per_s"],
                100 * stats.data_wait_share,
                stats.loss,
                ", ".join(f"{t} {v:.4f}" for t, v in stats.task_losses.items()),
                ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith("/auc")),
            )
        state = {
            "model": unwrap(model).state_dict(),
            "best_model": best_model,
            "weighting": weighting.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "history": json.dumps(history),
            "best": stopper.best if stopper.best is not None else float("nan"),
            "best_epoch": stopper.best_epoch,
            "epochs_without_improvement": stopper.epochs_without_improvement,
        }
        _report(rank, {**record, "done": 0.0}, state)
        if stop:
            break

    # Test metrics with the best weights, merged exactly across ranks like validation.
    unwrap(model).load_state_dict(best_model)
    test = _evaluate_split(model, inputs, bundle.run.test_split, bundle, spec)
    final = {**(history[-1] if history else {}), **{f"test/{k}": v for k, v in test.items()}}
    assert state is not None
    _report(
        rank,
        {**final, "done": 1.0},
        {**state, "model": best_model, "test": json.dumps(test), "spec_json": inputs.spec_json},
    )


def _latest_loadable_state(candidates: list[Checkpoint | None]) -> dict[str, Any] | None:
    """The training state of the latest epoch among the candidates that load.

    Ray restores its newest registered checkpoint on a worker-group restart, and also
    when a stopped run is resumed under the same name; that one can be the corrupt
    checkpoint the driver skipped (``newest_readable_checkpoint``), so an unreadable
    candidate is passed over for the driver's choice.
    """
    latest: dict[str, Any] | None = None
    for checkpoint in candidates:
        if checkpoint is None:
            continue
        try:
            with checkpoint.as_directory() as directory:
                state = load_checkpoint_state(directory)
        except Exception as exc:  # a truncated or garbled file
            _log.warning("checkpoint %s is unreadable (%s); skipping it", checkpoint.path, exc)
            continue
        if latest is None or int(state["epoch"]) > int(latest["epoch"]):
            latest = state
    return latest


def _evaluate_split(
    model: torch.nn.Module,
    inputs: RunInputs,
    split: str,
    bundle: RunConfigBundle,
    spec: FeatureSpec,
) -> dict[str, float]:
    stream = _stream(inputs, split, bundle, 0, bundle.train.eval_batch_size)
    metrics = evaluate(model, stream, spec, group_column=bundle.train.gauc_group_column)
    stream.finish()
    return metrics


def _report(rank: int, metrics: dict[str, float], state: dict[str, Any]) -> None:
    """Every rank reports (Ray requires it); rank 0 attaches the checkpoint."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state, Path(directory) / STATE_FILE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))


def _sum_across_ranks(value: int) -> int:
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor)
    return int(tensor.item())


# ---------------------------------------------------------------------- driver side
@dataclass
class TrainingOutcome:
    run_dir: str
    artifact_path: str
    metrics: dict[str, float]
    history: list[dict[str, float]]


JOIN_TIMEOUT_S = 10.0
"""How long a cluster named by ``ray.address`` gets to answer before the job gives up."""


class RayClusterUnreachable(InputError):
    """``ray.address`` names a cluster that cannot be found or does not answer."""


@dataclass(frozen=True)
class RayCluster:
    """The Ray a run trained on, as recorded in its metrics.json."""

    address: str  # the GCS address the driver is connected to
    joined: bool  # True: an existing cluster (ray.address set); False: a local Ray for this job
    node_ids: list[str]
    resources: dict[str, float]


def init_ray(cfg: RayConfig) -> RayCluster:
    """Start this job's own local Ray (``ray.address`` null), or join the named cluster.

    A bare ``ray.init()`` would look at ``RAY_ADDRESS`` and Ray's current-cluster file
    (``$RAY_TMPDIR``, else ``$TMPDIR``, else ``/tmp``, then ``ray/ray_current_cluster``,
    written by ``ray start``): it silently joins whatever cluster those name, or fails on a
    stale file. ``address="local"`` always starts a fresh local Ray. Joining passes no
    resource arguments (Ray refuses them for an existing cluster) and first checks, within
    ``JOIN_TIMEOUT_S``, that the cluster answers: Ray itself retries for many minutes.
    """
    if not ray.is_initialized():
        if cfg.address is None:
            ray.init(
                address="local",
                include_dashboard=cfg.include_dashboard,
                dashboard_host=cfg.dashboard_host,
                num_cpus=max(os.cpu_count() or 1, int(cfg.num_workers * cfg.cpus_per_worker)),
                log_to_driver=True,
            )
        else:
            _check_answers(cfg.address)
            ray.init(address=cfg.address, log_to_driver=True)
    cluster = RayCluster(
        address=ray.get_runtime_context().gcs_address,
        joined=cfg.address is not None,
        node_ids=sorted(node["NodeID"] for node in ray.nodes() if node["Alive"]),
        resources={k: float(v) for k, v in ray.cluster_resources().items()},
    )
    if cluster.joined:
        _log.info(
            "joined Ray cluster %s (ray.address %s): %d node(s), %g CPU, %g GPU, "
            "%.1f GiB object store",
            cluster.address,
            cfg.address,
            len(cluster.node_ids),
            cluster.resources.get("CPU", 0.0),
            cluster.resources.get("GPU", 0.0),
            cluster.resources.get("object_store_memory", 0.0) / 2**30,
        )
    return cluster


def _check_answers(address: str) -> None:
    """Raise ``RayClusterUnreachable`` unless the cluster ``ray.init(address)`` would join
    accepts a TCP connection within ``JOIN_TIMEOUT_S``."""
    target = (os.environ.get("RAY_ADDRESS") or address) if address == "auto" else address
    if "://" in target:  # ray://host:port: the Ray Client server
        host_port = target.split("://", 1)[1]
    else:
        try:  # Ray's own lookup for "auto" (RAY_ADDRESS, then the current-cluster file)
            host_port = services.canonicalize_bootstrap_address(target) or target
        except (ConnectionError, ValueError) as exc:
            raise RayClusterUnreachable(f"ray.address {address!r}: {exc}") from None
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=JOIN_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        raise RayClusterUnreachable(
            f"ray.address {address!r}: no Ray cluster answers at {host_port} "
            f"within {JOIN_TIMEOUT_S:g} s ({exc})"
        ) from None


def run_training(
    lake: Lake,
    bundle: RunConfigBundle,
    run_name: str,
    resume_from: Checkpoint | None = None,
) -> ray.train.Result:
    """Launch ``worker_loop`` on ``bundle.ray.num_workers`` workers and wait for it."""
    inputs = resolve_inputs(lake, bundle.run)
    train_rows = train_rows_for(inputs, bundle.ray.num_workers)
    steps_per_epoch = max(1, train_rows // (bundle.train.batch_size * bundle.ray.num_workers))
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "bundle": bundle.to_json(),
            "inputs": json.dumps(asdict(inputs)),
            "steps_per_epoch": steps_per_epoch,
            "resume_from": resume_from.path if resume_from is not None else None,
        },
        torch_config=TorchConfig(backend="nccl" if bundle.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=bundle.ray.num_workers,
            use_gpu=bundle.ray.use_gpu,
            resources_per_worker={
                "CPU": bundle.ray.cpus_per_worker,
                **({"GPU": bundle.ray.gpus_per_worker or 1.0} if bundle.ray.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=_absolute(bundle.run.storage_path),
            failure_config=FailureConfig(max_failures=bundle.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=bundle.run.checkpoints_to_keep),
        ),
    )
    return trainer.fit()


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def load_checkpoint_state(directory: str | Path) -> dict[str, Any]:
    """A checkpoint's training state; raises on a corrupt or partial file."""
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)


def newest_readable_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint of ``run_dir`` whose state loads; older ones on corruption."""
    candidates = sorted(
        (p for p in run_dir.glob("checkpoint_*") if (p / STATE_FILE).exists()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for candidate in candidates:
        try:
            load_checkpoint_state(candidate)
        except Exception as exc:  # a truncated or garbled file: try the previous one
            _log.warning("checkpoint %s is unreadable (%s); falling back", candidate, exc)
            continue
        return Checkpoint.from_directory(str(candidate))
    return None


def finalize_run(
    run_dir: Path,
    checkpoint: Checkpoint,
    bundle: RunConfigBundle,
    table_versions: dict[str, int],
    cluster: RayCluster,
) -> TrainingOutcome:
    """Write the run's outputs from its final checkpoint: artifact, metrics.json, config."""
    with checkpoint.as_directory() as directory:
        state = load_checkpoint_state(directory)
    if "test" not in state:
        raise RuntimeError(f"{run_dir}: the last checkpoint is not a finished run's")
    spec = FeatureSpec.from_json(state["spec_json"])
    model = build_model(spec, bundle.model)
    model.load_state_dict(state["model"])
    history = json.loads(state["history"])
    test = json.loads(state["test"])
    best_epoch = int(state["best_epoch"])
    best = (
        history[best_epoch] if 0 <= best_epoch < len(history) else (history[-1] if history else {})
    )
    metrics = {**best, **{f"test/{k}": v for k, v in test.items()}}
    artifact_path = run_dir / "model.pt"
    save_artifact(
        artifact_from_model(model, spec, bundle.model, metrics, bundle.train), artifact_path
    )
    (run_dir / "metrics.json").write_text(
        json.dumps(
            {
                "final": metrics,
                "best_epoch": best_epoch,
                "history": history,
                "table_versions": table_versions,
                "ray": asdict(cluster),
            },
            indent=2,
            sort_keys=True,
        )
    )
    (run_dir / "config.json").write_text(bundle.to_json())
    return TrainingOutcome(str(run_dir), str(artifact_path), metrics, history)
