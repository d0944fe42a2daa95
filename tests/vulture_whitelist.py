"""What vulture cannot see used: names that other code looks up by name. tests/test_unused.py passes
this file to vulture with src/baseforge; it is read, never run (`_.name` marks `name` as used).

Dead code does not belong here: delete it instead.
"""
# ruff: noqa: B018, F821

# urllib's handler hooks (eval/judge_api.py): an opener calls `<scheme>_open` and redirect_request.
_.redirect_request
_.http_open
_.https_open

# lm-eval's LM interface (eval/harness.py): lm-eval calls these, disable_tqdm by keyword.
_.tokenizer_name
_._loglikelihood_tokens
_.loglikelihood_rolling
_.generate_until
_.disable_tqdm

# transformers' remote-code hooks (eval/hf_remote/, copied into exported folders): the model class is
# named only in config.json's auto_map, the rest are read or called by transformers.
_.BaseforgeForCausalLM
_.model_type
_.attribute_map
_.config_class
_.base_model_prefix
_.supports_gradient_checkpointing
_.get_input_embeddings
_.set_input_embeddings
_.get_output_embeddings
_.set_output_embeddings
_.prepare_inputs_for_generation

# Attributes set on other libraries' objects, for them to read: a tokenizers.Tokenizer's
# (tokenizer.py, eval/models.py), a tqdm bar's (progress.py), torch's TF32 switches (train/precision.py).
_.pre_tokenizer
_.decoder
_.leave
_.allow_tf32

# A class for the type checker only, named in a string: cast("Transformer", ...) in model/gpt.py.
_.Transformer

# MetricsRow fields set by keyword (peak_memory's dict, read back by name) and written by to_json,
# which walks dataclasses.fields (train/metrics.py).
_.clip_frac
_.peak_alloc_gib
_.peak_reserved_gib
_.peak_rss_gib

# functools.lru_cache keys (data/sources.py `_parquet_file`): the file's modification time and size are
# arguments only so that a file written again at the same path is a new key.
_.mtime_ns

# RunState's schedule tail (train/state.py): saved in state.json by asdict, read back by key in
# train/schedule.py Tail.from_state.
_.tail_from
_.tail_lr
_.tail_peak
_.tail_warmup
