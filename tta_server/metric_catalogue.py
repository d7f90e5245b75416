"""What the server's metrics are called and mean, and their buckets: the catalogue
:mod:`tta_server.metrics` registers. Names are prefixed ``tta_``, in base units; label values are
bounded (HTTP methods outside :data:`HTTP_METHODS` count as ``other``)."""

from __future__ import annotations

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)
RATIO_SIGNALS = {
    "source_agreement": "share of each step's predictions that agree with the frozen source model",
    "atc_accuracy": "ATC accuracy estimate of each step's adapted predictions",
    "atc_accuracy_source": "ATC accuracy estimate of the frozen source model on each step's batch",
    "majority_share": "share of each step's batch predicted as its most frequent class (collapse)",
    "marginal_entropy": "entropy of each step's mean prediction over log(classes) (1: uniform, 0: one class)",
    "teacher_agreement": "share of each update's student predictions that agree with its teacher",
    "dropout_accuracy": "dropout-disagreement (AETTA-style) accuracy estimate of each step (dropout_estimate on)",
}
# relative distances of the model from the source: name -> help
DISTANCE_SIGNALS = {
    "parameter_distance": "relative L2 distance of the adapted parameters from the source's, after each update",
    "prototype_distance": "relative distance of each step's class-conditional feature means from the source "
    "class prototypes",
}
DISTANCE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2)
DEPENDENCE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 1.5, 2)
BN_SHIFT_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20)
IMAGE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})  # others: "other"
# counters the stream manager keeps, exported under these names
MANAGER_COUNTERS = {
    "diverged_steps": ("tta_diverged_steps", "adaptation steps undone because they produced non-finite values"),
    "spills": ("tta_stream_spills", "idle streams written to the snapshot store to make room"),
    "wakes": ("tta_stream_wakes", "spilled streams brought back into memory"),
    "refused_memory_budget": ("tta_refused_steps_memory_budget", "steps refused (503) by the memory budget"),
    "refused_step_too_large": (
        "tta_refused_steps_too_large",
        "steps refused (413) because they alone exceed the whole memory budget: requests too large",
    ),
    "refused_stream_limit": (
        "tta_refused_streams_stream_limit",
        "streams refused (503) by max_streams or max_streams_total",
    ),
    "snapshot_failures": ("tta_snapshot_failures", "snapshot writes that failed (retried on the next pass)"),
    "spill_failures": ("tta_spill_failures", "spills that failed (the stream stayed in memory)"),
    "snapshots_verified": (
        "tta_snapshots_verified",
        "restored snapshots found sound by the background check after start",
    ),
    "delete_failures": ("tta_snapshot_delete_failures", "snapshot deletions that failed (the stream was kept)"),
}
