"""Distributed multi-task training on Ray Train, streaming gold/examples through Petastorm.

Local (starts a local Ray, dashboard off):
    python -m jobs.train --config cluster_configs/local.yaml

On a Ray cluster (run from the project root):
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.train --config cluster_configs/cluster_s3.yaml --ray-address auto

Outputs in <run.storage_path>/<run name>/: model.pt (loads with weights_only=True),
metrics.json (per-epoch history, final val/test metrics, the gold build and the Delta
versions read, the Ray it ran on),
config.json, curves.png, tensorboard/ and Ray's checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from jobs.config import PipelineConfig, job_config
from mtlrec import private_network
from mtlrec.config import RayConfig, add_config_arguments
from mtlrec.errors import InputError, run_job
from mtlrec.gold_build import build_ref
from mtlrec.gold_snapshot import GoldSnapshot
from mtlrec.lake import Lake
from mtlrec.log import get_logger, log_stage
from mtlrec.tables import GOLD_VOCABULARY

_log = get_logger("jobs.train")
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.train",
        description="Train a multi-task model data-parallel on Ray Train (Petastorm input).",
    )
    add_config_arguments(parser)
    add_ray_address_argument(parser)
    parser.add_argument(
        "--resume",
        metavar="RUN",
        default=None,
        help="continue the stopped run RUN from its newest readable checkpoint",
    )
    return parser.parse_args(argv)


def add_ray_address_argument(parser: argparse.ArgumentParser) -> None:
    """``--ray-address``, for every job that runs on Ray (``ray_for_job`` reads it)."""
    parser.add_argument(
        "--ray-address",
        default=None,
        help="join a Ray cluster ('auto' or 'ray://host:port'); default: ray.address, "
        "else a local Ray",
    )


def write_curves(run_dir: Path, history: list[dict[str, float]]) -> None:
    """TensorBoard event files and a PNG of the training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    for record in history:
        step = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and math.isfinite(value):
                writer.add_scalar(key, value, step)
    writer.close()

    losses = sorted(k for k in history[0] if k.startswith("train/loss"))
    aucs = sorted(k for k in history[0] if k.startswith("val/") and k.endswith("/auc"))
    epochs = [r["epoch"] for r in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in losses:
        left.plot(epochs, [r[key] for r in history], marker="o", label=key)
    left.set_title("training loss")
    left.set_xlabel("epoch")
    left.legend(fontsize=7)
    for key in aucs:
        right.plot(epochs, [r[key] for r in history], marker="o", label=key)
    right.set_title("validation AUC")
    right.set_xlabel("epoch")
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(run_dir / "curves.png", dpi=100)
    plt.close(figure)


def log_to_mlflow(
    tracking_uri: str, run_name: str, cfg: PipelineConfig, history: list[dict[str, float]]
) -> None:
    try:
        import mlflow
    except ImportError:
        raise RuntimeError(
            "run.mlflow_tracking_uri is set but mlflow is not installed: pip install mlflow"
        ) from None
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_name=run_name):
        mlflow.log_params({"architecture": cfg.model.architecture, "epochs": cfg.train.epochs})
        for record in history:
            step = int(record["epoch"])
            mlflow.log_metrics(
                {k.replace("/", "_"): v for k, v in record.items() if math.isfinite(v)}, step
            )


def _needs_outside_network(cfg: PipelineConfig) -> str | None:
    """Which location of a run lies beyond this machine (only the field and scheme)."""
    for field, location in (
        ("lake.root", cfg.lake.root),
        ("run.storage_path", cfg.run.storage_path),
        ("run.mlflow_tracking_uri", cfg.run.mlflow_tracking_uri or ""),
    ):
        if "://" in location and not location.startswith("file://"):
            return f"{field} is a {location.split('://', 1)[0]}:// location"
    return None


def ray_for_job(
    cfg: PipelineConfig,
    ray_address: str | None,
    module: str,
    argv: list[str] | None,
    may_reexec: bool,
) -> RayConfig:
    """The Ray section a job on Ray runs with: ``--ray-address`` wins over ``ray.address``.

    A local Ray (no address) with ``ray.private_network`` re-executes the job
    (``python -m module argv``) in a private network namespace when ``may_reexec`` allows
    it and nothing the run touches lies beyond this machine: then this call does not
    return. In the re-executed process it brings loopback up before Ray starts.
    """
    if private_network.inside():
        private_network.bring_loopback_up()
    ray_cfg = cfg.ray.model_copy(update={"address": ray_address or cfg.ray.address})
    local_ray = ray_cfg.address is None
    if may_reexec and local_ray and cfg.ray.private_network and not private_network.inside():
        blocker = _needs_outside_network(cfg) or private_network.unavailable_reason()
        if blocker is None:
            private_network.reexec(module, sys.argv[1:] if argv is None else argv)
        _log.warning(
            "ray.private_network not applied (%s): Ray's servers listen on all interfaces",
            blocker,
        )
    return ray_cfg


class RunNameError(InputError):
    """A run that cannot start under this name or resume point."""


def checked_run_name(name: str) -> str:
    """``name``, if it is a safe directory name under run.storage_path (else exit 2)."""
    if not _RUN_NAME.fullmatch(name):
        # The name is a directory under run.storage_path: nothing may point outside it.
        raise RunNameError(
            f"invalid run name {name!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit)"
        )
    return name


def local_run_dir(cfg: PipelineConfig, name: str) -> Path:
    """Where the driver writes the outputs of run ``name``.

    Local runs resolve to an absolute path; object-store runs (s3://...) are written by
    Ray's storage layer, and the driver's outputs go to a local mirror of the run.
    """
    storage = cfg.run.storage_path
    return (Path(storage).resolve() if "://" not in storage else Path("runs")) / name


def main(argv: list[str] | None = None, *, may_reexec: bool = False) -> int:
    """The job. ``may_reexec``: the process is the job's own (``python -m jobs.train``), so
    it may replace itself to run in a private network namespace (``ray.private_network``)."""
    return run_job("train", lambda: _train(argv, may_reexec))


def _train(argv: list[str] | None, may_reexec: bool) -> None:
    args = parse_args(argv)
    cfg = job_config(args, "train")
    # Heavy imports after the config is known to be valid: --help and bad configs stay fast.
    from mtl_model.ray_train import (
        RunConfigBundle,
        finalize_run,
        init_ray,
        newest_readable_checkpoint,
        resolve_inputs,
        run_training,
        train_rows_for,
    )

    run_name = checked_run_name(
        args.resume or cfg.run.name or f"mtl-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    )
    ray_cfg = ray_for_job(cfg, args.ray_address, "jobs.train", argv, may_reexec)
    bundle = RunConfigBundle(cfg.model, cfg.train, cfg.run, ray_cfg)
    run_dir = local_run_dir(cfg, run_name)
    resume_from = None
    if args.resume is not None:
        resume_from = newest_readable_checkpoint(run_dir)
        if resume_from is None:
            raise RunNameError(f"no readable checkpoint under {run_dir} to resume")
        _log.info("resuming %s from %s", run_name, resume_from.path)

    # The gold build is resolved once, here; the workers read exactly its versions. No
    # build, an empty split, too few row groups: one line (exit 2) before Ray starts.
    lake = Lake.from_config(cfg.lake)
    snapshot = GoldSnapshot.resolve(lake)
    # What the artifact records for scoring's check; a build without a vocabulary (example
    # tables written by other tools) records none, and scoring then needs the same spec.
    has_vocabulary = snapshot.versions.get(GOLD_VOCABULARY) is not None
    gold_build = build_ref(lake, snapshot) if has_vocabulary else None
    inputs = resolve_inputs(lake, snapshot, cfg.run)
    train_rows_for(inputs, ray_cfg.num_workers)
    cluster = init_ray(ray_cfg)
    _log.info(
        "run %s: %s on %d %s worker(s), %d epoch(s), gold build %s",
        run_name,
        cfg.model.architecture,
        ray_cfg.num_workers,
        "GPU" if ray_cfg.use_gpu else "CPU",
        cfg.train.epochs,
        snapshot.build_id,
    )
    result = run_training(inputs, bundle, run_name, resume_from)
    if result.error is not None:
        raise result.error
    assert result.checkpoint is not None
    outcome = finalize_run(run_dir, result.checkpoint, bundle, snapshot, gold_build, cluster)
    write_curves(run_dir, outcome.history)
    if cfg.run.mlflow_tracking_uri:
        log_to_mlflow(cfg.run.mlflow_tracking_uri, run_name, cfg, outcome.history)
    summary = {k: v for k, v in outcome.metrics.items() if k.endswith(("/auc", "/gauc", "/rmse"))}
    log_stage(_log, "train", run=run_name, epochs=len(outcome.history), **summary)
    print(json.dumps({"run_dir": outcome.run_dir, "artifact": outcome.artifact_path}))


if __name__ == "__main__":
    raise SystemExit(main(may_reexec=True))
