"""How to scale a child task's loss: the measurement behind ``weighting.child_loss_scale``.

    python -m benchmarks.child_loss_scale --config cluster_configs/local.yaml \\
        [--set lake.root=... --set generator.truth_root=...] [--seeds 3] [--threads 1] \\
        [--architectures mmoe,shared_bottom] [--candidates batch,parent_positives]

Reads the lake's gold snapshot (the feature job must have run), then trains every
architecture x candidate x seed through ``mtl_model.loop.fit`` (part 4's ``train``) with
the config's train section otherwise as it is, and prints one markdown row per
architecture and candidate: each test AUC as the median over seeds, its 95 % seeds x
bootstrap interval (the same resamples for every row), its share of the oracle's lift and
its sd over seeds. Candidates:

- ``parent_positives``: each child's loss is its mean over its parent's positives
  (the behaviour before issue 19);
- ``batch``: the same sum divided by the whole batch;
- ``child_weight_0.1``: ``parent_positives`` with the children's fixed weights cut to 0.1
  and purchase_value's to 0 (the hand-tuned setting issue 19 measured).

single_task trains each task in its own model, where Adam makes a per-task constant
scale nearly irrelevant; it is the reference the shared architectures must match.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.bench_quality import (
    ORACLE_TASKS,
    TaskScores,
    auc_interval,
    bootstrap_rows,
    label_column,
    predictions,
    read_inputs,
    train,
)
from benchmarks.harness import lift_share, median
from jobs.config import PipelineConfig
from mtl_model.config import TrainConfig
from mtlrec.config import load_config

ARCHITECTURES = ("single_task", "shared_bottom", "mmoe", "ple", "esmm")
CHILDREN = ("add_to_cart", "purchase")


def candidates(base: TrainConfig) -> dict[str, TrainConfig]:
    weighting = base.weighting
    return {
        "parent_positives": base.model_copy(
            update={"weighting": weighting.model_copy(
                update={"child_loss_scale": "parent_positives"})}
        ),
        "batch": base.model_copy(
            update={"weighting": weighting.model_copy(update={"child_loss_scale": "batch"})}
        ),
        "child_weight_0.1": base.model_copy(
            update={"weighting": weighting.model_copy(update={
                "child_loss_scale": "parent_positives",
                "task_weights": {**{t: 0.1 for t in CHILDREN}, "purchase_value": 0.0},
            })}
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child_loss_scale",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", default="cluster_configs/local.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--candidates", default="parent_positives,batch,child_weight_0.1")
    args = parser.parse_args(argv)
    cfg = load_config(PipelineConfig, args.config, args.overrides)
    torch.set_num_threads(args.threads)
    spec, splits, oracle = read_inputs(cfg)
    test = splits["test"]
    labels = {t: test.batch[label_column(spec, t)].numpy() for t in ORACLE_TASKS}
    resamples = bootstrap_rows(test.rows, 200)
    print(f"rows: train {splits['train'].rows:,}, val {splits['val'].rows:,}, test {test.rows:,}"
          "; test positives " + ", ".join(f"{t} {int(labels[t].sum())}" for t in ORACLE_TASKS)
          + "; oracle AUC " + ", ".join(f"{t} {oracle[t]:.3f}" for t in ORACLE_TASKS), flush=True)
    configs = candidates(cfg.train)
    runs = [(arch, name, configs[name]) for arch in args.architectures.split(",")
            for name in args.candidates.split(",")]
    for arch, name, train_cfg in runs:
        family = TaskScores.empty()
        model_cfg = cfg.model.model_copy(update={"architecture": arch})
        for seed in range(args.seeds):
            model = train(spec, model_cfg, train_cfg, splits["train"], splits["val"], seed)
            family.add(predictions(model, test, train_cfg.eval_batch_size))
        aucs = family.aucs(labels)
        cells = []
        for task in ORACLE_TASKS:
            low, high = auc_interval(labels[task], family.runs[task], resamples)
            value = median(aucs[task])
            cells.append(f"{value:.3f} [{low:.3f}, {high:.3f}] "
                         f"({lift_share(value, oracle[task]):.2f}, sd "
                         f"{float(np.std(aucs[task])):.3f})")
        print(f"| {arch} | {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
