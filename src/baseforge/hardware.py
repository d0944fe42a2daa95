"""GPUs the toolkit knows: dense peak TFLOP/s per precision and memory size, by exact name.

Peaks are dense (no 2:4 sparsity) tensor-core numbers with FP32 accumulation (what autocast
uses), from the vendors' datasheets and architecture whitepapers (GeForce cards: the whitepaper's
"FP16 Tensor TFLOPS with FP32 Accumulate" column, half their FP16-accumulate headline). The fp32
column is TF32 tensor cores where the GPU has them (Ampere and later; the trainer enables TF32),
else plain FP32 (V100, T4). Memory is the datasheet capacity in GiB; the CUDA context and the
allocator take some of it (the planner reserves that separately).

Names are matched exactly after normalising (lower case, no "NVIDIA"/"GeForce"/"Tesla" prefix,
dashes as spaces), never by substring: "NVIDIA H100 NVL" is not an H100 SXM, "NVIDIA L40" is not
an L4. Each GPU lists the strings `torch.cuda.get_device_name()` reports for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from baseforge.errors import UserError


@dataclass(frozen=True)
class GPU:
    key: str  # short CLI name, e.g. "h100-sxm"
    label: str  # human name
    bf16: float | None  # dense TFLOP/s, FP32 accumulate; None = no bf16
    fp16: float
    fp32: float  # TF32 tensor cores where present, else plain FP32
    memory_gib: float
    names: tuple[str, ...]  # device names as torch reports them (matched after normalising)
    source: str  # where the numbers come from

    def peak_tflops(self, precision: str) -> float | None:
        return {"bf16": self.bf16, "fp16": self.fp16, "fp32": self.fp32}.get(precision)


_DS = "vendor datasheet"
_WP = "architecture whitepaper (FP32-accumulate column)"

GPUS: tuple[GPU, ...] = (
    GPU("rtx-3090", "RTX 3090", 71, 71, 35.6, 24, ("NVIDIA GeForce RTX 3090",), _WP),
    GPU("rtx-3090-ti", "RTX 3090 Ti", 80, 80, 40, 24, ("NVIDIA GeForce RTX 3090 Ti",), _WP),
    GPU("rtx-4090", "RTX 4090", 165.2, 165.2, 82.6, 24, ("NVIDIA GeForce RTX 4090",), _WP),
    GPU("rtx-5090", "RTX 5090", 209.5, 209.5, 104.8, 32, ("NVIDIA GeForce RTX 5090",), _WP),
    GPU("rtx-a6000", "RTX A6000", 154.8, 154.8, 77.4, 48, ("NVIDIA RTX A6000",), _DS),
    GPU(
        "rtx-6000-ada",
        "RTX 6000 Ada",
        364.2,
        364.2,
        182.1,
        48,
        ("NVIDIA RTX 6000 Ada Generation",),
        _WP,
    ),
    GPU("a10", "A10", 125, 125, 62.5, 24, ("NVIDIA A10",), _DS),
    # AWS's A10G: a GA102 with GeForce-like half-rate FP32 accumulate (AWS quotes no dense figure).
    GPU("a10g", "A10G", 70, 70, 35, 24, ("NVIDIA A10G",), "AWS instance page / GA102 rate"),
    GPU("a100-40gb", "A100 40GB SXM", 312, 312, 156, 40, ("NVIDIA A100-SXM4-40GB",), _DS),
    GPU("a100-80gb", "A100 80GB SXM", 312, 312, 156, 80, ("NVIDIA A100-SXM4-80GB",), _DS),
    GPU("a100-40gb-pcie", "A100 40GB PCIe", 312, 312, 156, 40, ("NVIDIA A100-PCIE-40GB",), _DS),
    GPU("a100-80gb-pcie", "A100 80GB PCIe", 312, 312, 156, 80, ("NVIDIA A100 80GB PCIe",), _DS),
    GPU("l4", "L4", 121, 121, 60, 24, ("NVIDIA L4",), _DS),
    GPU("l40", "L40", 181, 181, 90.5, 48, ("NVIDIA L40",), _DS),
    GPU("l40s", "L40S", 362, 362, 183, 48, ("NVIDIA L40S",), _DS),
    GPU("h100-sxm", "H100 SXM", 989, 989, 494, 80, ("NVIDIA H100 80GB HBM3", "NVIDIA H100"), _DS),
    GPU("h100-pcie", "H100 PCIe", 756, 756, 378, 80, ("NVIDIA H100 PCIe",), _DS),
    GPU("h100-nvl", "H100 NVL", 835, 835, 418, 94, ("NVIDIA H100 NVL",), _DS),
    GPU("h200", "H200 SXM", 989, 989, 494, 141, ("NVIDIA H200",), _DS),
    GPU("h200-nvl", "H200 NVL", 835, 835, 418, 141, ("NVIDIA H200 NVL",), _DS),
    GPU("b200", "B200", 2250, 2250, 1100, 180, ("NVIDIA B200",), _DS),
    GPU("v100-sxm2-16gb", "V100 SXM2 16GB", None, 125, 15.7, 16, ("Tesla V100-SXM2-16GB",), _DS),
    GPU("v100-sxm2-32gb", "V100 SXM2 32GB", None, 125, 15.7, 32, ("Tesla V100-SXM2-32GB",), _DS),
    GPU("v100-pcie-16gb", "V100 PCIe 16GB", None, 112, 14, 16, ("Tesla V100-PCIE-16GB",), _DS),
    GPU("v100-pcie-32gb", "V100 PCIe 32GB", None, 112, 14, 32, ("Tesla V100-PCIE-32GB",), _DS),
    GPU("t4", "T4", None, 65, 8.1, 16, ("Tesla T4",), _DS),
)
# Other spellings users type on the command line.
ALIASES = {"a100": "a100-80gb", "h100": "h100-sxm", "v100": "v100-sxm2-32gb", "h200-sxm": "h200"}


def normalise(name: str) -> str:
    name = re.sub(r"[-_/]", " ", name.strip().lower())
    words = [w for w in name.split() if w not in ("nvidia", "geforce", "tesla")]
    return " ".join(words)


_BY_NAME = {normalise(n): gpu for gpu in GPUS for n in gpu.names}
_BY_KEY = {gpu.key: gpu for gpu in GPUS}


def gpu_for_device_name(device_name: str) -> GPU | None:
    """The GPU a `torch.cuda.get_device_name()` string names, or None when not in the table."""
    return _BY_NAME.get(normalise(device_name))


def find_gpu(name: str) -> GPU:
    """A GPU by short name (`h100-sxm`), alias or device name; UserError listing them otherwise."""
    key = name.strip().lower()
    gpu = _BY_KEY.get(ALIASES.get(key, key)) or gpu_for_device_name(name)
    if gpu is None:
        raise UserError(f"unknown GPU {name!r}; known: {', '.join(g.key for g in GPUS)}")
    return gpu
