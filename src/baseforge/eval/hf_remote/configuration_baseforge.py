"""Configuration of a baseforge GPT (GPT-2 layout with rotary positions, RMSNorm, QK-norm, ReLU², soft-cap,
attention within documents and windows, value embeddings, U-net skips).

Shipped by `baseforge export` next to `modeling_baseforge.py`; needs only transformers.
"""

try:  # transformers >= 5 renamed the base class
    from transformers import PreTrainedConfig
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import PretrainedConfig as PreTrainedConfig


class BaseforgeConfig(PreTrainedConfig):
    model_type = "baseforge_gpt"
    attribute_map = {
        "hidden_size": "n_embd",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
        "max_position_embeddings": "context",
    }

    def __init__(
        self,
        vocab_size: int = 50257,
        context: int = 1024,
        n_layer: int = 12,
        n_head: int = 12,
        n_embd: int = 768,
        qkv_bias: bool = False,
        bias: bool = False,
        tie_weights: bool = False,
        pos_emb: str = "rope",
        norm: str = "rmsnorm",
        qk_norm: bool = True,
        mlp_act: str = "relu2",
        logit_softcap: float = 15.0,
        rope_base: float = 10000.0,
        attn_doc_mask: bool = False,
        rope_doc_reset: bool = False,
        attn_window: int = 0,
        value_embeds: int = 0,
        unet_skips: bool = False,
        doc_token=None,
        layer_norm_eps: float = 1e-5,
        rms_norm_eps: float = 1e-6,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.context = context
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_embd = n_embd
        self.qkv_bias = qkv_bias
        self.bias = bias
        self.tie_weights = tie_weights
        self.pos_emb = pos_emb
        self.norm = norm
        self.qk_norm = qk_norm
        self.mlp_act = mlp_act
        self.logit_softcap = logit_softcap
        self.rope_base = rope_base
        self.attn_doc_mask = attn_doc_mask
        self.rope_doc_reset = rope_doc_reset
        self.attn_window = attn_window
        self.value_embeds = value_embeds
        self.unet_skips = unet_skips
        self.doc_token = doc_token
        self.layer_norm_eps = layer_norm_eps
        self.rms_norm_eps = rms_norm_eps
        kwargs["tie_word_embeddings"] = tie_weights  # transformers ties lm_head to wte itself
        kwargs.setdefault("use_cache", False)
        super().__init__(**kwargs)
