"""Multi-task recommendation models in plain PyTorch, built from a ``FeatureSpec``.

Modules: ``features`` (embedding / normalisation / DCN-v2 layer), ``architectures``
(single-task, shared-bottom, MMoE, PLE, ESMM), ``losses`` (masked per-task losses and
weighting strategies), ``metrics`` (exact, mergeable AUC / GAUC / log loss / calibration /
RMSE), ``loop`` (training epoch, evaluation, schedule, early stopping), ``transfer``
(warm start), ``distill`` (teacher-student), ``artifact`` (save / load / TorchScript),
``synthetic`` (a funnel problem with known probabilities). No Ray, no data source.
"""
