"""Fuzzing a data dir, with the run-dir fuzz's contract (test_fuzz_files.py): every manifest field
removed, retyped, out of range or made a path; shards truncated, emptied, bit-flipped, filled with ids
past the vocabulary, replaced by a folder or a symlink. Each case then reads the manifest, gathers train
batches (concatenated and best-fit), the validation slice, and checks every shard as `data info --check`
does: each must succeed or refuse with a one-line UserError, read no file outside the test's folder, and
leave the data dir byte-identical.

Seeded and bounded: the default run takes well under a minute; `-m slow` runs many more cases."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from baseforge.cli.data import check_shards
from baseforge.data.batch_plan import BatchLayout
from baseforge.data.loader import TokenData
from baseforge.data.manifest import read_manifest
from baseforge.data.shards import HEADER
from baseforge.errors import UserError
from test_fuzz_files import BAD_VALUES, READS, _flip, allowed_roots, fields, set_field, tree

SHARDS = ["train_000000.bin", "val_000000.bin"]


def mutations(data, rng: random.Random, limit: int):
    cases = []
    manifest = json.loads((data / "manifest.json").read_text())
    for keys in fields(manifest):
        for value in [..., *rng.sample(BAD_VALUES, 3)]:
            cases.append((f"manifest {'.'.join(map(str, keys))} = {value!r}", _json_case(keys, value)))
    for name in SHARDS:
        size = (data / name).stat().st_size
        cases.append((f"{name} truncated", _bytes_case(name, lambda b: b[: len(b) // 3])))
        cases.append((f"{name} emptied", _bytes_case(name, lambda b: b"")))
        cases.append((f"{name} ids past the vocabulary", _bytes_case(name, _past_vocab)))
        for _ in range(3):
            at = rng.randrange(size)
            flip = _bytes_case(name, lambda b, at=at: _flip(b, at % max(len(b), 1)))  # a pair may have cut it
            cases.append((f"{name} bit {at} flipped", flip))
        cases.append((f"{name} is a folder", _folder_case(name)))
        cases.append((f"{name} -> symlink outside", _symlink_case(name)))
    cases.append(("manifest nested 50,000 deep", lambda d: (d / "manifest.json").write_text("[" * 50_000)))
    cases.append(("manifest is a list", lambda d: (d / "manifest.json").write_text("[]")))
    rng.shuffle(cases)
    while len(cases) < limit:  # the slow variant: random pairs
        (d1, f1), (d2, f2) = rng.sample(cases, 2)
        cases.append((f"{d1} + {d2}", lambda d, f1=f1, f2=f2: (f1(d), f2(d))))
    return cases[:limit]


def _past_vocab(data: bytes) -> bytes:
    body = bytearray(data)
    body[HEADER.size :: 97] = b"\xff" * len(body[HEADER.size :: 97])
    return bytes(body)


def _json_case(keys, value):
    def mutate(data):
        try:
            record = json.loads((data / "manifest.json").read_text())
        except (ValueError, RecursionError):  # an earlier mutation of a pair broke the file
            return
        try:
            set_field(record, keys, value)
        except (KeyError, TypeError, IndexError):  # an earlier mutation of a pair removed the parent
            return
        (data / "manifest.json").write_text(json.dumps(record))

    return mutate


def _bytes_case(name, change):
    def mutate(data):
        if (data / name).is_file() and not (data / name).is_symlink():
            (data / name).write_bytes(change((data / name).read_bytes()))

    return mutate


def _folder_case(name):
    def mutate(data):
        if (data / name).is_file():
            (data / name).unlink()
            (data / name).mkdir()

    return mutate


def _symlink_case(name):
    def mutate(data):
        outside = data.parent / "outside.bin"
        if (data / name).is_file() and not (data / name).is_symlink():
            outside.write_bytes((data / name).read_bytes())
            (data / name).unlink()
            (data / name).symlink_to(outside)

    return mutate


def commands(data):
    def batches(packing):
        def read():
            stream = TokenData(data, 64, 0, packing)
            for step in range(3):
                stream.micro_batch(step, 0, BatchLayout(micro_batch=4))
            for _ in stream.val_batches(4096, 4):
                pass

        return read

    return {
        "manifest": lambda: read_manifest(data),
        "concat": batches("concat"),
        "bestfit": batches("bestfit"),
        "check": lambda: check_shards(data, read_manifest(data)),
    }


def run_cases(source, tmp_path, limit, seed):
    rng = random.Random(seed)
    failures, refused, accepted = [], 0, 0
    for i, (what, mutate) in enumerate(mutations(source, rng, limit)):
        box = tmp_path / f"case{i}"
        data = box / "data"
        shutil.copytree(source, data, symlinks=True)
        mutate(data)
        before = tree(data)
        READS.allowed, READS.outside = allowed_roots(data), []
        for name, command in commands(data).items():
            READS.armed = True
            try:
                command()
                accepted += 1
            except UserError as exc:
                refused += 1
                if "\n" in str(exc):
                    failures.append(f"{what}: {name}: a refusal of more than one line: {str(exc)[:200]!r}")
            except Exception as exc:  # noqa: BLE001 - what the fuzz looks for
                failures.append(f"{what}: {name}: {type(exc).__name__}: {str(exc)[:200]}")
            finally:
                READS.armed = False
            if tree(data) != before:
                failures.append(f"{what}: {name} changed the data dir")
        if READS.outside:
            failures.append(f"{what}: read outside the data dir: {sorted(set(READS.outside))[:3]}")
        shutil.rmtree(box)
    return failures, refused, accepted


def test_fuzzed_data_dirs_are_refused_in_one_line_or_read_correctly(shakespeare_dir, tmp_path):
    failures, refused, accepted = run_cases(shakespeare_dir, tmp_path, limit=120, seed=0)
    assert not failures, "\n".join(failures[:20])
    assert refused > 100 and accepted > 50  # the cases reach both outcomes


@pytest.mark.slow
def test_fuzzed_data_dirs_many_cases(shakespeare_dir, tmp_path):
    failures, refused, accepted = run_cases(shakespeare_dir, tmp_path, limit=1500, seed=1)
    print(f"data dir fuzz: {refused + accepted} command runs, {refused} refused, {accepted} accepted")
    assert not failures, "\n".join(failures[:20])
