"""Text sources -> tokenization -> token shards + manifest -> batches. Needs no model."""
