"""Fuzzing what a run dir holds: every JSON field of a checkpoint and of the run mutated (removed, retyped,
out of range, made a path), binary files truncated and bit-flipped, pointers swapped for names, paths and
symlinks. Each case then resumes, loads the model (sample, eval, export and init-from read it so) and
reads the data record: each must succeed or refuse with a UserError (one line at the CLI), read no file
outside the test's folder, and a refusal must leave the run dir byte-identical.

Seeded and bounded: the default run takes well under two minutes; `-m slow` runs many more cases."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path

import pytest

from baseforge.config import load_run_config
from baseforge.errors import UserError
from baseforge.rundir import RunDir
from baseforge.runlock import LOCK_FILE
from baseforge.train.checkpoint.data_record import read_data_history
from baseforge.train.checkpoint.format import load_model
from baseforge.train.loop import Trainer
from helpers import TINY, baseforge, sets

SHORT = [*TINY, "max_steps=4", "checkpoint_every=2"]
CKPT = Path("checkpoints") / "step_0000004"
JSON_FILES = [
    CKPT / "state.json",
    CKPT / "config.json",
    CKPT / "trainer.json",
    Path("config.json"),
    Path("data.json"),
]
BINARY_FILES = [CKPT / "model.safetensors", CKPT / "trainer.safetensors", CKPT / "tokenizer.json"]
BAD_VALUES = [None, -1, -5, 0, 1e30, float("nan"), "x", "../../outside", "/etc/hostname", [], {}, True, 2**63]


@pytest.fixture(scope="module")
def trained(shakespeare_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    result = baseforge(
        "train", "--data", shakespeare_dir, "--out", run, "--preset", "cpu-tiny", *sets(*SHORT)
    )
    assert result.returncode == 0, result.stderr
    return run


class Reads:
    """An audit hook that records every file opened outside the allowed folders while armed."""

    def __init__(self):
        self.armed, self.allowed, self.outside = False, (), []
        sys.addaudithook(self)

    def __call__(self, event, args):
        if not self.armed or event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.path.realpath(os.fsdecode(args[0]))
        if not path.startswith(self.allowed):
            self.outside.append(path)


READS = Reads()


def allowed_roots(*dirs: Path) -> tuple[str, ...]:
    import torch

    import baseforge

    roots = [
        *dirs,
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(baseforge.__file__).parent,
        Path(__file__).parent,
    ]
    roots += [Path(torch.__file__).parents[1], Path("/proc"), Path("/dev"), Path("/sys"), Path("/usr")]
    roots += [Path(os.environ.get("TIKTOKEN_CACHE_DIR", "/nonexistent"))]
    return tuple(os.path.realpath(p) for p in roots)


def tree(path: Path) -> dict:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "link"
        for p in sorted(path.rglob("*"))
        if p.name != LOCK_FILE and (p.is_file() or p.is_symlink())
    }


def fields(obj, prefix=()):
    """Every (path of keys) in a JSON object, nested objects included."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield (*prefix, key)
            yield from fields(value, (*prefix, key))


def set_field(obj, keys, value):
    for key in keys[:-1]:
        obj = obj[key]
    if value is ...:
        del obj[keys[-1]]
    else:
        obj[keys[-1]] = value


def mutations(run: Path, rng: random.Random, limit: int):
    """(description, mutate(run_copy)) cases, every field and file covered before any repeats."""
    cases = []
    for rel in JSON_FILES:
        record = json.loads((run / rel).read_text())
        for keys in fields(record):
            if keys[-1] == "compile":  # a valid switch that makes torch read its own caches (and is slow)
                continue
            for value in [..., *rng.sample(BAD_VALUES, 3)]:
                cases.append((f"{rel} {'.'.join(map(str, keys))} = {value!r}", _json_case(rel, keys, value)))
    for rel in BINARY_FILES:
        size = (run / rel).stat().st_size
        cases.append((f"{rel} truncated", _bytes_case(rel, lambda b: b[: len(b) // 3])))
        cases.append((f"{rel} emptied", _bytes_case(rel, lambda b: b"")))
        for _ in range(3):
            at = rng.randrange(size)
            cases.append((f"{rel} bit {at} flipped", _bytes_case(rel, lambda b, at=at: _flip(b, at))))
    for text in ["", "step_0000002", "step_9999999", "../../outside/ck", "/etc", "step_abc", "x" * 5000]:
        cases.append((f"latest = {text[:20]!r}", _pointer_case(text)))
    cases.append(("latest -> symlink outside", _symlink_case()))
    rng.shuffle(cases)
    while len(cases) < limit:  # the slow variant: random pairs of mutations
        (d1, f1), (d2, f2) = rng.sample(cases[: len(cases)], 2)
        cases.append((f"{d1} + {d2}", lambda r, f1=f1, f2=f2: (f1(r), f2(r))))
    return cases[:limit]


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :] if data else data


def _json_case(rel, keys, value):
    def mutate(run):
        record = json.loads((run / rel).read_text())
        try:
            set_field(record, keys, value)
        except (KeyError, TypeError):  # an earlier mutation of a pair removed the parent
            return
        (run / rel).write_text(json.dumps(record))

    return mutate


def _bytes_case(rel, change):
    def mutate(run):
        if (run / rel).is_file():
            (run / rel).write_bytes(change((run / rel).read_bytes()))

    return mutate


def _pointer_case(text):
    def mutate(run):
        (run / "checkpoints" / "latest").unlink(missing_ok=True)
        (run / "checkpoints" / "latest").write_text(text + "\n")

    return mutate


def _symlink_case():
    def mutate(run):
        outside = run.parent / "outside.txt"
        outside.write_text("secret\n")
        (run / "checkpoints" / "latest").unlink(missing_ok=True)
        (run / "checkpoints" / "latest").symlink_to(outside)

    return mutate


def commands(run: Path, data: Path):
    """What sample / eval / export / init-from (load_model), resume (Trainer.setup) and --resume's data
    choice (the data record) read from a run dir."""

    def resume():
        trainer = Trainer(load_run_config(run), data, run, resume=True, log=lambda *_: None)
        trainer.setup()

    return {
        "load": lambda: load_model(run),
        "resume": resume,
        "data record": lambda: read_data_history(RunDir(run)),
    }


def run_cases(trained, shakespeare_dir, tmp_path, limit, seed):
    rng = random.Random(seed)
    failures, refused, accepted = [], 0, 0
    for i, (what, mutate) in enumerate(mutations(trained, rng, limit)):
        box = tmp_path / f"case{i}"
        run = box / "run"
        shutil.copytree(trained, run, symlinks=True)
        mutate(run)
        before = tree(run)
        READS.allowed, READS.outside = allowed_roots(box, shakespeare_dir), []
        for name, command in commands(run, shakespeare_dir).items():
            READS.armed = True
            try:
                command()
                accepted += 1
            except UserError as exc:
                refused += 1
                if "\n" in str(exc) or "secret" in str(exc):
                    failures.append(f"{what}: {name}: a refusal of more than one line: {str(exc)[:200]!r}")
            except Exception as exc:  # noqa: BLE001 - what the fuzz looks for
                failures.append(f"{what}: {name}: {type(exc).__name__}: {str(exc)[:200]}")
            finally:
                READS.armed = False
            if tree(run) != before:
                failures.append(f"{what}: {name} changed the run dir")
        if READS.outside:
            failures.append(f"{what}: read outside the test's folder: {sorted(set(READS.outside))[:3]}")
        shutil.rmtree(box)
    return failures, refused, accepted


def test_fuzzed_run_dirs_are_refused_in_one_line_or_read_correctly(trained, shakespeare_dir, tmp_path):
    failures, refused, accepted = run_cases(trained, shakespeare_dir, tmp_path, limit=160, seed=0)
    assert not failures, "\n".join(failures[:20])
    assert refused > 100 and accepted > 20  # the cases reach both outcomes


@pytest.mark.slow
def test_fuzzed_run_dirs_many_cases(trained, shakespeare_dir, tmp_path):
    failures, refused, accepted = run_cases(trained, shakespeare_dir, tmp_path, limit=1500, seed=1)
    print(f"fuzz: {refused + accepted} command runs, {refused} refused, {accepted} accepted")
    assert not failures, "\n".join(failures[:20])
