"""baseforge: train a GPT-2-class base language model from scratch."""

__version__ = "0.1.0"
