"""Checkpoints: the format on disk, the live run's save and restore, and the sharded (FSDP) backend.

format.py        names, atomic writes, pointers, prune, find, read (documents a checkpoint's files)
checkpointer.py  `Checkpointer`: where to resume from, the run dir's first writes, save and restore;
                 the one place that picks the backend
sharded.py       the DCP backend: every rank's shards, consolidation to one model file
statefile.py     nested state (optimizers, RNG) as safetensors + JSON, without pickle

Callers import from the submodules; this file re-exports nothing. The RNG states a checkpoint holds
are train/rng.py's (which also starts each rank's stream when a run is built).
"""
