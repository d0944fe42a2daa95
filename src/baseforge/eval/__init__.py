"""Evaluation: held-out loss, HellaSwag, and the instruction-following test (finetune -> answer -> judge)."""
