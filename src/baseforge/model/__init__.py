"""GPT modules and the weight mapping to and from HF GPT-2. Takes tensors, never files."""

from baseforge.model.config import ModelConfig
from baseforge.model.gpt import GPT, KVCache

__all__ = ["GPT", "KVCache", "ModelConfig"]
