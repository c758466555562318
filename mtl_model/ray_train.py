"""Data-parallel training on Ray Train: the driver that launches it and what each worker adds.

The job resolves the gold snapshot once (``GoldSnapshot``: the spec row and the table
versions it names) and ``resolve_inputs`` pins the file list of each split of
``gold/examples`` at exactly that version, so every rank reads the same snapshot even if
gold is rebuilt during the run. Each worker (``worker_loop``) runs the one epoch driver,
``mtl_model.loop.fit``, over its Petastorm shard, adding only what Ray needs:

    the process group and the DDP model        (ray.train.torch.prepare_model)
    this rank's shard, per epoch               (the ranks agree on the smallest step count)
    after each epoch: the rows read verified,
    the TrainState checkpoint (rank 0) and ray.train.report(...)

Worker failures restart the group from the last reported checkpoint (Ray's
FailureConfig); ``resume`` restarts a stopped run from its newest readable checkpoint,
falling back to an older one if the newest is corrupt.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray._private import services  # Ray's own address lookup (pinned 2.55.1)
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from mtl_model.architectures import MultiTaskModel, build_model
from mtl_model.artifact import artifact_from_model, load_artifact, save_artifact
from mtl_model.checkpoint import STATE_FILE, TrainState
from mtl_model.config import ModelConfig, TrainConfig
from mtl_model.features import Batch
from mtl_model.loop import EpochBatches, evaluate, fit
from mtl_model.metrics import strict_json
from mtl_model.run_config import TrainRunConfig
from mtl_model.shards import list_row_groups
from mtl_model.streaming import (
    BatchColumns,
    ShardStream,
    StreamBatch,
    StreamSettings,
    split_file_urls,
)
from mtl_model.transfer import warm_start
from mtlrec.config import RayConfig
from mtlrec.errors import InputError
from mtlrec.gold_build import GoldBuildRef
from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake
from mtlrec.log import get_logger
from mtlrec.tables import GOLD_EXAMPLES

_log = get_logger("train")


class TrainInputError(InputError, ValueError):
    """The snapshot cannot be trained on: a split without files, too few row groups."""


@dataclass
class RunInputs:
    """What every worker needs, resolved once by the driver (JSON-serialisable)."""

    snapshot_json: str
    files: dict[str, list[str]]
    """split -> the files of that split in the snapshot's version of gold/examples."""
    storage_options: dict[str, str] = field(default_factory=dict)

    @property
    def snapshot(self) -> GoldSnapshot:
        return GoldSnapshot.from_json(self.snapshot_json)


def resolve_inputs(lake: Lake, snapshot: GoldSnapshot, run_cfg: TrainRunConfig) -> RunInputs:
    """Each split's files in the version of gold/examples that ``snapshot`` names."""
    version = snapshot.version(GOLD_EXAMPLES)
    files = {
        split: split_file_urls(lake, split, version=version)
        for split in ("train", run_cfg.validation_split, run_cfg.test_split)
    }
    for split, split_files in files.items():
        if not split_files:
            raise TrainInputError(
                f"{GOLD_EXAMPLES} has no files for split={split} at version {version}: "
                "check features.gold's split days (training needs train, val and test days)"
            )
    return RunInputs(snapshot.to_json(), files, dict(lake.storage_options))


def train_rows_for(inputs: RunInputs, num_workers: int) -> int:
    """Rows of the train split; raises when some rank would get no row group.

    Ranks train for the MIN of their batch counts (DDP must not hang on unequal shards),
    so one rank without a row group would make every rank train zero steps, silently.
    """
    groups = list_row_groups(inputs.files["train"], storage_options=inputs.storage_options)
    if len(groups) < num_workers:
        raise TrainInputError(
            f"{GOLD_EXAMPLES} split=train has {len(groups)} row group(s) for {num_workers} "
            "workers, so some workers would get no rows: rewrite it with a smaller "
            "lake.row_group_bytes or train with fewer ray.num_workers"
        )
    return sum(group.num_rows for group in groups)


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


# ---------------------------------------------------------------------- worker side
class _Shards:
    """This rank's Petastorm shards of the pinned splits."""

    def __init__(self, inputs: RunInputs, bundle: RunConfigBundle) -> None:
        self.inputs = inputs
        self.bundle = bundle
        self.spec = inputs.snapshot.spec
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()

    def stream(self, split: str, epoch: int) -> ShardStream:
        """``split`` for one epoch (train: reshuffled with the epoch's seed)."""
        train, run = self.bundle.train, self.bundle.run
        training = split == "train"
        return ShardStream(
            self.inputs.files[split],
            BatchColumns.from_spec(
                self.spec, id_columns=() if training else [train.gauc_group_column]
            ),
            rank=self.rank,
            world_size=self.world_size,
            settings=StreamSettings(
                batch_size=train.batch_size if training else train.eval_batch_size,
                seed=train.seed * 1_000_003 + epoch,
                shuffle=training,
                shuffle_buffer_rows=run.shuffle_buffer_rows if training else 0,
                reader_pool=run.reader_pool,
                reader_workers=run.reader_workers,
                retries=run.read_retries,
            ),
            storage_options=self.inputs.storage_options,
        )

    def train(self, epoch: int) -> EpochBatches:
        stream = self.stream("train", epoch)
        return EpochBatches(
            cast(Iterable[Batch], stream),  # training batches carry tensors only
            max_steps=_min_across_ranks(stream.expected_batches()),
            finish=stream.finish,  # drains the rest of the shard, verifies the row count
        )

    def evaluation(self, split: str) -> Iterator[StreamBatch]:
        stream = self.stream(split, 0)
        yield from stream
        stream.finish()


def _min_across_ranks(value: int) -> int:
    # The tensor lives on this rank's device: NCCL (GPU workers) reduces only CUDA tensors.
    tensor = torch.tensor([value], dtype=torch.int64, device=ray.train.torch.get_device())
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
    shards = _Shards(inputs, bundle)
    threads = bundle.run.torch_threads_per_worker or max(1, int(bundle.ray.cpus_per_worker))
    torch.set_num_threads(threads)
    torch.manual_seed(bundle.train.seed)

    core = build_model(shards.spec, bundle.model)
    if bundle.train.transfer.source is not None:
        warm_start(core, load_artifact(bundle.train.transfer.source), bundle.train.transfer)
    model = ray.train.torch.prepare_model(core)
    device = next(core.parameters()).device
    teacher: MultiTaskModel | None = None
    if bundle.train.distill.teacher is not None:
        teacher = load_artifact(bundle.train.distill.teacher).build().to(device)
    # A worker-group restart within this run gets Ray's latest checkpoint; a resumed run
    # (``jobs.train --resume``) also gets the checkpoint the driver chose.
    resume_from = loop_config.get("resume_from")
    resume = _latest_loadable_state(
        [ray.train.get_checkpoint(), Checkpoint(resume_from) if resume_from else None]
    )

    def report(record: dict[str, float], state: TrainState) -> None:
        _report(shards.rank, {**record, "done": 0.0}, state)

    state = fit(
        model,
        shards.train,
        lambda: shards.evaluation(bundle.run.validation_split),
        shards.spec,
        bundle.train,
        steps_per_epoch=loop_config["steps_per_epoch"],
        resume=resume,
        teacher=teacher,
        on_epoch=report,
        log=_log.info if shards.rank == 0 else None,
    )
    # The model now holds the best weights: test metrics, merged exactly across ranks.
    state.test = evaluate(
        model,
        shards.evaluation(bundle.run.test_split),
        shards.spec,
        group_column=bundle.train.gauc_group_column,
    )
    final = {**(state.history[-1] if state.history else {})}
    final.update({f"test/{k}": v for k, v in state.test.items()})
    _report(shards.rank, {**final, "done": 1.0}, state)


def _latest_loadable_state(candidates: list[Checkpoint | None]) -> TrainState | None:
    """The training state of the latest epoch among the candidates that load.

    Ray restores its newest registered checkpoint on a worker-group restart, and also
    when a stopped run is resumed under the same name; that one can be the corrupt
    checkpoint the driver skipped (``newest_readable_checkpoint``), so an unreadable
    candidate is passed over for the driver's choice.
    """
    latest: TrainState | None = None
    for checkpoint in candidates:
        if checkpoint is None:
            continue
        try:
            with checkpoint.as_directory() as directory:
                state = TrainState.load(directory)
        except Exception as exc:  # a truncated or garbled file
            _log.warning("checkpoint %s is unreadable (%s); skipping it", checkpoint.path, exc)
            continue
        if latest is None or state.epoch > latest.epoch:
            latest = state
    return latest


def _report(rank: int, metrics: dict[str, float], state: TrainState) -> None:
    """Every rank reports (Ray requires it); rank 0 attaches the checkpoint."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        state.save(directory)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))


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


def init_ray(cfg: RayConfig, cpus_needed: float | None = None) -> RayCluster:
    """Start this job's own local Ray (``ray.address`` null), or join the named cluster.

    A local Ray gets the machine's CPUs, or more if the job reserves more at once:
    ``cpus_needed``, by default one run's workers (a search passes its concurrent trials').

    A bare ``ray.init()`` would look at ``RAY_ADDRESS`` and Ray's current-cluster file
    (``$RAY_TMPDIR``, else ``$TMPDIR``, else ``/tmp``, then ``ray/ray_current_cluster``,
    written by ``ray start``): it silently joins whatever cluster those name, or fails on a
    stale file. ``address="local"`` always starts a fresh local Ray. ``"auto"`` joins what
    Ray's own lookup finds: ``RAY_ADDRESS``, else that file, else the one GCS process
    running on this machine. Joining passes no resource arguments (Ray refuses them for an
    existing cluster) and first checks, within ``JOIN_TIMEOUT_S``, that the cluster
    answers: Ray itself retries for many minutes.
    """
    if not ray.is_initialized():
        if cfg.address is None:
            ray.init(
                address="local",
                include_dashboard=cfg.include_dashboard,
                dashboard_host=cfg.dashboard_host,
                num_cpus=max(
                    os.cpu_count() or 1,
                    math.ceil(cpus_needed or cfg.num_workers * cfg.cpus_per_worker),
                ),
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
    inputs: RunInputs,
    bundle: RunConfigBundle,
    run_name: str,
    resume_from: Checkpoint | None = None,
    callbacks: list[ray.train.UserCallback] | None = None,
) -> ray.train.Result:
    """Launch ``worker_loop`` on ``bundle.ray.num_workers`` workers and wait for it.

    ``callbacks`` see every report the workers make (one per epoch, then the final one
    with ``done`` 1); a search (``mtl_model.tune``) forwards the epoch records to Tune.
    """
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
            # Train V2's RunConfig at run time; the stubs mypy reads name V1's callbacks.
            callbacks=cast(Any, callbacks),
        ),
    )
    return trainer.fit()


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def newest_readable_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint of ``run_dir`` whose state loads; older ones on corruption."""
    candidates = sorted(
        (p for p in run_dir.glob("checkpoint_*") if (p / STATE_FILE).exists()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for candidate in candidates:
        try:
            TrainState.load(candidate)
        except Exception as exc:  # a truncated or garbled file: try the previous one
            _log.warning("checkpoint %s is unreadable (%s); falling back", candidate, exc)
            continue
        return Checkpoint.from_directory(str(candidate))
    return None


def finalize_run(
    run_dir: Path,
    checkpoint: Checkpoint,
    bundle: RunConfigBundle,
    snapshot: GoldSnapshot,
    gold_build: GoldBuildRef | None,
    cluster: RayCluster,
) -> TrainingOutcome:
    """Write the run's outputs from its final checkpoint: artifact, metrics.json, config."""
    with checkpoint.as_directory() as directory:
        state = TrainState.load(directory)
    if state.test is None:
        raise RuntimeError(f"{run_dir}: the last checkpoint is not a finished run's")
    model = build_model(snapshot.spec, bundle.model)
    model.load_state_dict(state.best_model)
    metrics = {**state.best_record(), **{f"test/{k}": v for k, v in state.test.items()}}
    artifact_path = run_dir / "model.pt"
    save_artifact(
        artifact_from_model(
            model, snapshot.spec, bundle.model, metrics, bundle.train, gold_build=gold_build
        ),
        artifact_path,
    )
    write_run_metrics(run_dir, state, metrics, snapshot, cluster)
    (run_dir / "config.json").write_text(bundle.to_json())
    return TrainingOutcome(str(run_dir), str(artifact_path), metrics, state.history)


def write_run_metrics(
    run_dir: Path,
    state: TrainState,
    final: dict[str, float],
    snapshot: GoldSnapshot,
    cluster: RayCluster | None,
) -> None:
    """metrics.json: the final metrics, the history, and exactly what the run read."""
    (run_dir / "metrics.json").write_text(
        strict_json(
            {
                "final": final,
                "best_epoch": state.best_epoch,
                "history": state.history,
                "gold_build_id": snapshot.build_id,
                "table_versions": {t: v for t, v in snapshot.versions.items() if v is not None},
                "ray": asdict(cluster) if cluster is not None else None,
            },
            indent=2,
            sort_keys=True,
        )
    )
