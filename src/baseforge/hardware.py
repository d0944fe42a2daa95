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
    GPU(
        "rtx-3090",
        "RTX 3090",
        bf16=71,
        fp16=71,
        fp32=35.6,
        memory_gib=24,
        names=("NVIDIA GeForce RTX 3090",),
        source=_WP,
    ),
    GPU(
        "rtx-3090-ti",
        "RTX 3090 Ti",
        bf16=80,
        fp16=80,
        fp32=40,
        memory_gib=24,
        names=("NVIDIA GeForce RTX 3090 Ti",),
        source=_WP,
    ),
    GPU(
        "rtx-4090",
        "RTX 4090",
        bf16=165.2,
        fp16=165.2,
        fp32=82.6,
        memory_gib=24,
        names=("NVIDIA GeForce RTX 4090",),
        source=_WP,
    ),
    GPU(
        "rtx-5090",
        "RTX 5090",
        bf16=209.5,
        fp16=209.5,
        fp32=104.8,
        memory_gib=32,
        names=("NVIDIA GeForce RTX 5090",),
        source=_WP,
    ),
    GPU(
        "rtx-a6000",
        "RTX A6000",
        bf16=154.8,
        fp16=154.8,
        fp32=77.4,
        memory_gib=48,
        names=("NVIDIA RTX A6000",),
        source=_DS,
    ),
    GPU(
        "rtx-6000-ada",
        "RTX 6000 Ada",
        bf16=364.2,
        fp16=364.2,
        fp32=182.1,
        memory_gib=48,
        names=("NVIDIA RTX 6000 Ada Generation",),
        source=_WP,
    ),
    GPU("a10", "A10", bf16=125, fp16=125, fp32=62.5, memory_gib=24, names=("NVIDIA A10",), source=_DS),
    # AWS's A10G: a GA102 with GeForce-like half-rate FP32 accumulate (AWS quotes no dense figure).
    GPU(
        "a10g",
        "A10G",
        bf16=70,
        fp16=70,
        fp32=35,
        memory_gib=24,
        names=("NVIDIA A10G",),
        source="AWS instance page / GA102 rate",
    ),
    GPU(
        "a100-40gb",
        "A100 40GB SXM",
        bf16=312,
        fp16=312,
        fp32=156,
        memory_gib=40,
        names=("NVIDIA A100-SXM4-40GB",),
        source=_DS,
    ),
    GPU(
        "a100-80gb",
        "A100 80GB SXM",
        bf16=312,
        fp16=312,
        fp32=156,
        memory_gib=80,
        names=("NVIDIA A100-SXM4-80GB",),
        source=_DS,
    ),
    GPU(
        "a100-40gb-pcie",
        "A100 40GB PCIe",
        bf16=312,
        fp16=312,
        fp32=156,
        memory_gib=40,
        names=("NVIDIA A100-PCIE-40GB",),
        source=_DS,
    ),
    GPU(
        "a100-80gb-pcie",
        "A100 80GB PCIe",
        bf16=312,
        fp16=312,
        fp32=156,
        memory_gib=80,
        names=("NVIDIA A100 80GB PCIe",),
        source=_DS,
    ),
    GPU("l4", "L4", bf16=121, fp16=121, fp32=60, memory_gib=24, names=("NVIDIA L4",), source=_DS),
    GPU("l40", "L40", bf16=181, fp16=181, fp32=90.5, memory_gib=48, names=("NVIDIA L40",), source=_DS),
    GPU("l40s", "L40S", bf16=362, fp16=362, fp32=183, memory_gib=48, names=("NVIDIA L40S",), source=_DS),
    GPU(
        "h100-sxm",
        "H100 SXM",
        bf16=989,
        fp16=989,
        fp32=494,
        memory_gib=80,
        names=("NVIDIA H100 80GB HBM3", "NVIDIA H100"),
        source=_DS,
    ),
    GPU(
        "h100-pcie",
        "H100 PCIe",
        bf16=756,
        fp16=756,
        fp32=378,
        memory_gib=80,
        names=("NVIDIA H100 PCIe",),
        source=_DS,
    ),
    GPU(
        "h100-nvl",
        "H100 NVL",
        bf16=835,
        fp16=835,
        fp32=418,
        memory_gib=94,
        names=("NVIDIA H100 NVL",),
        source=_DS,
    ),
    GPU("h200", "H200 SXM", bf16=989, fp16=989, fp32=494, memory_gib=141, names=("NVIDIA H200",), source=_DS),
    GPU(
        "h200-nvl",
        "H200 NVL",
        bf16=835,
        fp16=835,
        fp32=418,
        memory_gib=141,
        names=("NVIDIA H200 NVL",),
        source=_DS,
    ),
    GPU("b200", "B200", bf16=2250, fp16=2250, fp32=1100, memory_gib=180, names=("NVIDIA B200",), source=_DS),
    GPU(
        "v100-sxm2-16gb",
        "V100 SXM2 16GB",
        bf16=None,
        fp16=125,
        fp32=15.7,
        memory_gib=16,
        names=("Tesla V100-SXM2-16GB",),
        source=_DS,
    ),
    GPU(
        "v100-sxm2-32gb",
        "V100 SXM2 32GB",
        bf16=None,
        fp16=125,
        fp32=15.7,
        memory_gib=32,
        names=("Tesla V100-SXM2-32GB",),
        source=_DS,
    ),
    GPU(
        "v100-pcie-16gb",
        "V100 PCIe 16GB",
        bf16=None,
        fp16=112,
        fp32=14,
        memory_gib=16,
        names=("Tesla V100-PCIE-16GB",),
        source=_DS,
    ),
    GPU(
        "v100-pcie-32gb",
        "V100 PCIe 32GB",
        bf16=None,
        fp16=112,
        fp32=14,
        memory_gib=32,
        names=("Tesla V100-PCIE-32GB",),
        source=_DS,
    ),
    GPU("t4", "T4", bf16=None, fp16=65, fp32=8.1, memory_gib=16, names=("Tesla T4",), source=_DS),
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
