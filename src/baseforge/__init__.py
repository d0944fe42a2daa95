"""baseforge: train a GPT-2-class base language model from scratch."""

from baseforge.errors import UserError

__version__ = "0.1.0"

# The oldest torch the test suite was run on (torch 2.11: the GPU machine's; CI runs 2.13). pyproject's
# `torch>=` says the same (a test checks); older ones lack APIs the trainer uses (FSDP2's FSDPModule,
# dcp.load(no_dist=...), torch.nn.utils.get_total_norm).
TORCH_FLOOR = (2, 11)


def require_torch() -> None:
    """One line, not an AttributeError deep in a run, when the installed torch is older than the floor."""
    import torch  # here, not at the top: `import baseforge` (and `baseforge --help`) stays light

    found = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if found < TORCH_FLOOR:
        floor = ".".join(map(str, TORCH_FLOOR))
        raise UserError(
            f"baseforge needs torch >= {floor}, found {torch.__version__}: pip install -U 'torch>={floor}'"
        )
