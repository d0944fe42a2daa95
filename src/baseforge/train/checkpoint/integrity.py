"""Checking a checkpoint's files before anything trusts them: checksums, tensor shapes, finite weights.

Checksums. A checkpoint's state.json records, under "files", the sha256 and size of each file whose bytes
no other check can judge (format.py's save_checkpoint writes it; `CHECKSUMMED` names them, and an FSDP
checkpoint adds every file under dcp/):

    "files": {"model.safetensors": {"sha256": "5e1f...", "bytes": 561360}, "dcp/.metadata": {...}, ...}

Every read through format.py and sharded.py verifies the files it is about to read (sample, eval, export,
finetune and --init-from: model.safetensors; a resume also trainer.*, or dcp/) and refuses a damaged one
in one line. state.json, config.json and tokenizer.json are left out: they are read field by field
(records.py), and a tokenizer is known by its content hash (tokenizer.py).

Why sha256: on CPUs with SHA extensions it is hashlib's fastest strong hash (on the 2-core AVX2 + SHA-NI
VM measured: sha256 1.37 GB/s, sha1 1.54, md5 0.60, blake2b 0.53, in memory), so nothing was worth a
weaker one. Verifying costs 0.73 to 1.19 s per GB there, from the page cache, the range being other jobs
on the same cores (`python benchmarks/bench_checksum.py --repeat 5`: a 1 GiB safetensors file; reading it
with the NaN/inf check below costs 0.15 to 0.25 s per GB). Saving hashes each file once more after
writing it: about as much again per checkpoint, on rank 0.

A checkpoint without the record (written during 0.1.0's development before checksums were recorded, or
with the record edited out) is refused rather than read unchecked: baseforge is unreleased, so no release
wrote one, and a check that deleting a field turns off would protect nothing.

Before the weights are read, their names and shapes are compared, from the safetensors header alone, with
those of the model the checkpoint's config describes (built on the meta device: no memory), so an edited
config cannot make a load allocate a model its weights do not fit. After, each weight must be finite.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import torch
from safetensors import SafetensorError, safe_open

from baseforge.errors import UserError
from baseforge.records import count, excerpt, read_json, text

CHUNK = 8 << 20  # large enough that the hash, not the loop, sets the pace


def digest(path: Path) -> dict:
    """The checksum record of one file: {"sha256": hex, "bytes": size}."""
    h, size = hashlib.sha256(), 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return {"sha256": h.hexdigest(), "bytes": size}


def record_files(folder: Path, names: Iterable[str], tree: str | None = None) -> dict[str, dict]:
    """The checksums of `names` in `folder` that exist, and of every file under `folder / tree`."""
    found = [n for n in names if (folder / n).is_file()]
    if tree is not None and (folder / tree).is_dir():
        found += sorted(p.relative_to(folder).as_posix() for p in (folder / tree).rglob("*") if p.is_file())
    return {name: digest(folder / name) for name in found}


def recorded(state_path: Path) -> dict:
    """The "files" record of a checkpoint's state.json, which must be there (see the module docstring)."""
    files = read_json(state_path, "checkpoint state").get("files")
    if files is None:
        raise UserError(
            f"{state_path} records no checksums of its files (written before baseforge recorded them, or "
            "edited), so they cannot be verified; use a checkpoint that has them (--which, or a step_N dir)"
        )
    if not isinstance(files, dict):
        raise UserError(f"{state_path}: files is {excerpt(files)}, not a checksum record; corrupt checkpoint")
    return files


def verify(state_path: Path, names: Iterable[str]) -> None:
    """Refuse (one line) any of `names`, in the checkpoint of `state_path`, that is not what was recorded."""
    ckpt, files = state_path.parent, recorded(state_path)
    for name in names:
        path = ckpt / name
        if path.is_symlink() or not path.is_file():
            raise UserError(f"{path} is missing or not a plain file; use another checkpoint (--which)")
        entry = files.get(name)
        if not isinstance(entry, dict):
            raise UserError(
                f"{state_path} records no checksum of {excerpt(name)}, so it cannot be verified; "
                f"corrupt checkpoint: use another one (--which, or a step_N dir)"
            )
        where = Path(f"{state_path} files.{name}")  # how the error line names the field
        want, size = text(entry, "sha256", where), count(entry, "bytes", where)
        actual, reason = path.stat().st_size, ""
        if actual != size:
            reason = f"{actual:,} bytes, recorded {size:,}"
        elif (got := digest(path)["sha256"]) != want:
            reason = f"sha256 {got[:12]}, recorded {str(want)[:12]}"
        if reason:
            raise UserError(
                f"{path} fails its checksum ({reason}): the file is damaged; use an earlier checkpoint "
                f"(its step_N dir, or --which best); to resume from one, write its name into "
                f"{ckpt.parent / 'latest'}"
            )


def verify_tree(state_path: Path, tree: str) -> None:
    """verify() every file under `tree` (a folder of the checkpoint) and every one recorded there."""
    ckpt, prefix = state_path.parent, tree.rstrip("/") + "/"
    present = {p.relative_to(ckpt).as_posix() for p in (ckpt / tree).rglob("*") if not p.is_dir()}
    verify(state_path, sorted(present | {n for n in recorded(state_path) if n.startswith(prefix)}))


def check_shapes(path: Path, expected: dict[str, torch.Size], config: str) -> None:
    """Refuse (one line) a safetensors file whose tensor names or shapes are not `expected`, from its header
    alone: nothing is read or allocated before they are known to fit. `config` is what set `expected`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise UserError(
            f"{path} is not readable safetensors ({excerpt(str(exc), 80)}); it is torn or corrupt"
        ) from None
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        names = ", ".join(
            [f"missing {excerpt(n, 60)}" for n in missing[:2]]
            + [f"unexpected {excerpt(n, 60)}" for n in extra[:2]]
        )
        raise UserError(
            f"{path} does not hold the tensors {config} describes ({names}): the config or the weights were "
            "edited; use another checkpoint (--which, or a step_N dir)"
        )
    for name, shape in expected.items():
        if found[name] != tuple(shape):
            raise UserError(
                f"{path}: {name} has shape {found[name]} but {config} makes it {tuple(shape)}: the config "
                "or the weights were edited; use another checkpoint (--which, or a step_N dir)"
            )


def check_finite(ckpt: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse (one line) weights with a NaN or an infinity: sampling from them fails, training diverges."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())):
            continue  # any NaN or inf makes the sum non-finite; far cheaper than isfinite() on each value
        bad = int((~torch.isfinite(tensor)).sum())  # the sum may also have overflowed: count exactly
        if bad:
            raise UserError(
                f"checkpoint {ckpt}: {name} holds {bad:,} values that are not finite (NaN or inf); "
                "use an earlier checkpoint (--which best, or a step_N dir)"
            )
