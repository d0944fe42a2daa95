"""GPT modules, preset shapes, and the weight mapping to and from HF GPT-2. Takes tensors, never files."""

from baseforge.model.config import MODEL_PRESETS, ModelConfig
from baseforge.model.gpt import GPT, KVCache

__all__ = ["GPT", "KVCache", "ModelConfig", "MODEL_PRESETS"]
