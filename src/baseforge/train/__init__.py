"""Training: the loop, optimizers, schedules, precision, checkpoints, distributed, metrics, charts."""
