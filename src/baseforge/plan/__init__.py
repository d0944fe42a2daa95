"""`baseforge plan`: what a preset needs to train on some GPUs, and how long it takes.

memory.py   the memory model: the bytes one GPU holds to train a preset, the largest micro-batch that fits
estimate.py the plan: a verdict, a speed, a time and a cost, from the memory model and a GPU's peak

The GPU table both read is `baseforge.hardware`, a leaf below train/ (whose MFU reads it too).
Callers import from the submodules; this file re-exports nothing.
"""
