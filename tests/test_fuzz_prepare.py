"""Fuzzing what `prepare` reads: JSON lines broken every way (bad bytes, truncated, not objects, no text
field, text that is no string, nested deep, lone surrogates, two objects on a line, gzip cut short or
bit-flipped), text in other encodings, Parquet files of every text-column type (and not UTF-8, cut short,
bit-flipped), symlinks out of the folder (to a file, a folder, /etc/passwd, dangling, looping) and odd
file names. Each case is prepared with 1 worker and with 2; each must end in a data dir (what it skipped
or replaced counted in the manifest) or refuse with a UserError of one line, read no file outside the
case's folder (nor its `outside` folder, unless --follow-symlinks), write nothing outside its out dir,
leave no out dir when it refuses (so no manifest claiming success), and give the same answer, to the
byte, for both numbers of workers.

Seeded and bounded: the default run (every ingredient once, every third case with 2 workers too) takes
well under 30 s; `-m slow` runs 1,500 cases, most of them two or three ingredients in one source folder,
every one with both numbers of workers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from baseforge.data.manifest import MANIFEST, read_manifest
from baseforge.data.prepare import prepare
from baseforge.data.shards import split_shards
from baseforge.errors import UserError
from baseforge.tokenizer import load_tokenizer

SECRET = "SECRETWORD"  # the text of every file outside a case's source folder
GPT2_CACHED = Path(os.environ.get("TIKTOKEN_CACHE_DIR", "/nonexistent")).is_dir()  # conftest sets it
WORDS = "the quick brown fox jumps over the lazy dog and then it runs far away into the woods "


def text(rng: random.Random, n: int = 12) -> str:
    words = WORDS.split()
    return " ".join(rng.choice(words) for _ in range(n)) + "."


# --- the hook that watches every file opened -------------------------------------------------------


class Files:
    """An audit hook recording, while armed, every file opened for reading outside `readable` and
    for writing outside `writable` (compiled bytecode aside)."""

    def __init__(self):
        self.armed, self.readable, self.writable = False, (), ()
        self.read_outside: list[str] = []
        self.written_outside: list[str] = []
        sys.addaudithook(self)

    def __call__(self, event, args):
        if not self.armed or event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.path.realpath(os.fsdecode(args[0]))
        mode, flags = args[1], args[2] or 0
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & (
            os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
        )
        if writes and not path.startswith(self.writable) and "/__pycache__/" not in path:
            self.written_outside.append(path)
        elif not path.startswith(self.readable):
            self.read_outside.append(path)


FILES = Files()


def readable_roots(*dirs: Path) -> tuple[str, ...]:
    import baseforge

    roots = [
        *dirs,
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(baseforge.__file__).parent,
        Path(__file__).parent,
    ]
    roots += [Path("/proc"), Path("/dev"), Path("/sys"), Path("/usr")]
    roots += [Path(os.environ.get("TIKTOKEN_CACHE_DIR", "/nonexistent"))]
    return tuple(os.path.realpath(p) for p in roots)


# --- ingredients: each writes something into a case's source folder and says what it expects ----------
# An ingredient is (name, make(rng, case) -> expectation); expectations: "refuse", "ok", "binary",
# "symlinks", "surrogates" (ok, with that counted in the manifest), or "any".


class Case:
    def __init__(self, box: Path, prefix: str):
        self.box, self.src, self.outside, self.prefix = box, box / "src", box / "outside", prefix
        self.options: dict = {}
        self.sources = [self.src]

    def path(self, name: str) -> Path:
        return self.src / f"{self.prefix}{name}"

    def secret(self, name: str, data: bytes | None = None) -> Path:
        target = self.outside / f"{self.prefix}{name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data if data is not None else (SECRET + " ").encode() * 20)
        return target


def rows(rng, n) -> list[bytes]:
    return [json.dumps({"text": text(rng), "id": i}).encode() for i in range(n)]


def jsonl(bad_line: bytes, expect: str, gz: bool = False):
    def make(rng, case: Case) -> str:
        lines = rows(rng, rng.randint(0, 6))
        lines.insert(rng.randint(0, len(lines)), bad_line)
        data = b"\n".join(lines) + rng.choice([b"\n", b""])
        if gz:
            case.path("rows.jsonl.gz").write_bytes(gzip.compress(data))
        else:
            case.path("rows.jsonl").write_bytes(data)
        return expect

    return make


def nested(depth: int, where: str = "field") -> bytes:
    """A line `depth` levels deep, the outer object counted."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    if where == "text":
        return b'{"text":' + inner + b"}"
    if where == "string":
        return b'{"text":"' + b"[" * depth + b'"}'
    return b'{"text":"deep","x":' + inner + b"}"


JSON_LINES = {
    "latin-1 byte": (b'{"text":"caf\xe9"}', "refuse"),
    "0xff byte": (b'{"text":"a\xffb"}', "refuse"),
    "overlong nul": (b'{"text":"\xc0\x80"}', "refuse"),
    "encoded surrogate": (b'{"text":"\xed\xa0\x80"}', "refuse"),
    "past U+10FFFF": (b'{"text":"\xf4\x90\x80\x80"}', "refuse"),
    "bad byte in another field": (b'{"text":"a","x":"\xe9"}', "refuse"),
    "truncated": (b'{"text":"half a li', "refuse"),
    "truncated after key": (b'{"text":', "refuse"),
    "null": (b"null", "refuse"),
    "number": (b"42", "refuse"),
    "string": (b'"just text"', "refuse"),
    "list": (b'["text", "x"]', "refuse"),
    "true": (b"true", "refuse"),
    "empty object": (b"{}", "refuse"),
    "no text field": (b'{"body":"words"}', "refuse"),
    "TEXT field": (b'{"TEXT":"words"}', "refuse"),
    "field names with line breaks": (b'{"a\\nb":1,"c\\rd":2}', "refuse"),
    "text int": (b'{"text":7}', "refuse"),
    "text float": (b'{"text":1.5}', "refuse"),
    "text list": (b'{"text":["a","b"]}', "refuse"),
    "text object": (b'{"text":{"a":"b"}}', "refuse"),
    "text null": (b'{"text":null}', "refuse"),
    "text bool": (b'{"text":false}', "refuse"),
    "text NaN": (b'{"text":NaN}', "refuse"),
    "text 5000 digits": (b'{"text":1' + b"0" * 5000 + b"}", "refuse"),
    "nested 50": (nested(50), "ok"),
    "nested 200": (nested(200), "ok"),
    "nested 201": (nested(201), "refuse"),
    "nested 1000": (nested(1000), "refuse"),
    "nested 100000": (nested(100_000), "refuse"),
    "text nested 5000": (nested(5000, "text"), "refuse"),
    "5000 brackets in a string": (nested(5000, "string"), "ok"),
    "lone high surrogate": (b'{"text":"half \\ud83d an emoji"}', "surrogates"),
    "lone low surrogate": (b'{"text":"\\udc00"}', "surrogates"),
    "reversed pair": (b'{"text":"\\ude00\\ud83d"}', "surrogates"),
    "surrogate in another field": (b'{"text":"a","x":"\\ud800"}', "ok"),
    "good pair": (b'{"text":"\\ud83d\\ude00"}', "ok"),
    "escaped nul": (b'{"text":"a\\u0000b"}', "ok"),
    "raw nul": (b'{"text":"a\x00b"}', "refuse"),
    "raw tab": (b'{"text":"a\tb"}', "refuse"),
    "raw nul after the object": (b'{"text":"a"}\x00', "refuse"),
    "two objects": (b'{"text":"a"}{"text":"b"}', "refuse"),
    "an object over two lines, then two on one": (b'{"text":"a"\n}{"text":"b"}', "refuse"),
    "pretty-printed": (b'{\n  "text": "a"\n}', "refuse"),
    "trailing garbage": (b'{"text":"a"} x', "refuse"),
    "trailing comma": (b'{"text":"a",}', "refuse"),
    "single quotes": (b"{'text':'a'}", "refuse"),
    "byte order mark": (b'\xef\xbb\xbf{"text":"bom"}', "ok"),
    "carriage return": (b'{"text":"cr"}\r', "ok"),
    "blank": (b"   \t ", "ok"),
    "vertical tab": (b"\x0b", "ok"),
    "duplicate key": (b'{"text":"a","text":"b"}', "ok"),
    "Infinity in another field": (b'{"text":"a","x":-Infinity}', "ok"),
    "1e999 in another field": (b'{"text":"a","x":1e999}', "ok"),
    "5000 digits in another field": (b'{"text":"a","x":1' + b"0" * 5000 + b"}", "ok"),
    "1000 fields": (json.dumps({f"k{i}": i for i in range(1000)}).encode(), "refuse"),
    "long text": (json.dumps({"text": "word " * 300_000}).encode(), "ok"),
}


def gz_damaged(cut: bool):
    def make(rng, case: Case) -> str:
        data = gzip.compress(b"\n".join(rows(rng, 40)) + b"\n")
        if cut:
            data = data[: rng.randint(1, len(data) - 1)]
        else:
            data = bytearray(data)
            at = rng.randrange(10, len(data))
            data[at] ^= 1 << rng.randrange(8)
            data = bytes(data)
        case.path("rows.jsonl.gz").write_bytes(data)
        return "any"

    return make


def encoded(encoding: str, suffix: str, expect: str):
    def make(rng, case: Case) -> str:
        body = "Café crème, naïve façade; " + text(rng, 30)
        if suffix == ".jsonl":
            body = json.dumps({"text": body}, ensure_ascii=False) + "\n"
        case.path(f"enc{suffix}").write_bytes(body.encode(encoding))
        return expect

    return make


def raw_bytes(data_of, expect: str, name: str = "raw.txt"):
    def make(rng, case: Case) -> str:
        case.path(name).write_bytes(data_of(rng))
        return expect

    return make


ENCODINGS = {
    "utf-16 text": encoded("utf-16", ".txt", "binary"),
    "utf-16-le text": encoded("utf-16-le", ".txt", "binary"),
    "utf-32 text": encoded("utf-32", ".txt", "binary"),
    "latin-1 text": encoded("latin-1", ".txt", "ok"),  # a few bad bytes: U+FFFD
    "cp1252 text": encoded("cp1252", ".txt", "ok"),
    "utf-8-sig text": encoded("utf-8-sig", ".txt", "ok"),
    "utf-16 json lines": encoded("utf-16", ".jsonl", "refuse"),
    "latin-1 json lines": encoded("latin-1", ".jsonl", "refuse"),
    "utf-8-sig json lines": encoded("utf-8-sig", ".jsonl", "ok"),
    "random bytes": raw_bytes(lambda rng: bytes(rng.randrange(1, 256) for _ in range(3000)), "binary"),
    "a nul byte": raw_bytes(lambda rng: text(rng).encode() + b"\x00" + text(rng).encode(), "binary"),
    "empty text": raw_bytes(lambda rng: b"", "ok"),
    "empty json lines": raw_bytes(lambda rng: b"", "ok", "empty.jsonl"),
    "gzip cut short": gz_damaged(cut=True),
    "gzip bit flipped": gz_damaged(cut=False),
    "not gzip": raw_bytes(lambda rng: b"plain text, not gzip", "refuse", "rows.jsonl.gz"),
}


def parquet(column_of, expect: str, **write):
    def make(rng, case: Case) -> str:
        table = column_of(rng)
        if isinstance(table, pa.Array):
            table = pa.table({"id": pa.array(range(len(table))), "text": table})
        pq.write_table(table, case.path("rows.parquet"), **write)
        return expect

    return make


def texts(rng, n=6):
    return [text(rng) for _ in range(n)]


def not_utf8(rng):
    values = [t.encode() for t in texts(rng)]
    values.insert(rng.randrange(len(values) + 1), b"caf\xe9")
    return pa.array(values, type=pa.binary()).view(pa.string())  # a view is never checked


def damaged_parquet(change):
    def make(rng, case: Case) -> str:
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": texts(rng, 40), "id": list(range(40))}), buf, row_group_size=8)
        case.path("rows.parquet").write_bytes(change(rng, bytearray(buf.getvalue())))
        return "any"

    return make


def flip(rng, data: bytearray) -> bytes:
    for _ in range(rng.choice([1, 2, 8])):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


PARQUET = {
    "int64 column": parquet(lambda rng: pa.array([1, 2, 3]), "refuse"),
    "double column": parquet(lambda rng: pa.array([1.5, None]), "refuse"),
    "bool column": parquet(lambda rng: pa.array([True, False]), "refuse"),
    "list column": parquet(lambda rng: pa.array([texts(rng, 2), []]), "refuse"),
    "struct column": parquet(lambda rng: pa.array([{"a": "x"}, {"a": "y"}]), "refuse"),
    "binary column": parquet(lambda rng: pa.array([t.encode() for t in texts(rng)]), "refuse"),
    "null column": parquet(lambda rng: pa.nulls(3), "refuse"),
    "timestamp column": parquet(lambda rng: pa.array([0, 1], type=pa.timestamp("s")), "refuse"),
    "large_string column": parquet(lambda rng: pa.array(texts(rng), type=pa.large_string()), "ok"),
    "dictionary column": parquet(lambda rng: pa.array(texts(rng)).dictionary_encode(), "ok"),
    "nulls among strings": parquet(lambda rng: pa.array([*texts(rng), None, None]), "ok"),
    "only nulls": parquet(lambda rng: pa.array([None, None], type=pa.string()), "ok"),
    "zero rows": parquet(lambda rng: pa.array([], type=pa.string()), "ok"),
    "a row group per row": parquet(lambda rng: pa.array(texts(rng, 20)), "ok", row_group_size=1),
    "not utf-8": parquet(not_utf8, "refuse"),
    "no text column": parquet(lambda rng: pa.table({"body": texts(rng)}), "refuse"),
    "two text columns": parquet(
        lambda rng: pa.Table.from_arrays([pa.array(texts(rng, 2))] * 2, names=["text", "text"]), "refuse"
    ),
    "cut short": damaged_parquet(lambda rng, d: bytes(d[: rng.randrange(1, len(d))])),
    "bit flipped": damaged_parquet(flip),
    "empty file": raw_bytes(lambda rng: b"", "refuse", "rows.parquet"),
    "not parquet": raw_bytes(lambda rng: b"PAR1 but nothing else", "refuse", "rows.parquet"),
}


def link(to, expect: str, name: str = "link.txt", follow: bool = False):
    def make(rng, case: Case) -> str:
        target = to(case)
        is_dir = isinstance(target, Path) and target.is_dir()
        case.path(name).symlink_to(target, target_is_directory=is_dir)
        if follow:
            case.options["follow_symlinks"] = True
        return expect

    return make


def outside_dir(case: Case) -> Path:
    folder = case.outside / f"{case.prefix}folder"
    (folder / "deeper").mkdir(parents=True, exist_ok=True)
    (folder / "deeper" / "more.txt").write_text(f"{SECRET} " * 20)
    return folder


def relative_secret(case: Case) -> str:
    return os.path.relpath(case.secret("rel.txt"), case.src)


def fifo(rng, case: Case) -> str:
    os.mkfifo(case.path("pipe.txt"))  # read, it would block forever
    case.path("to-pipe.txt").symlink_to(case.path("pipe.txt"))
    return "ok"


def loop(rng, case: Case) -> str:
    case.path("loop-a.txt").symlink_to(case.path("loop-b.txt"))
    case.path("loop-b.txt").symlink_to(case.path("loop-a.txt"))
    return "ok"


def given_as_file(rng, case: Case) -> str:
    """A symlink given on the command line is the user's own choice: read wherever it points."""
    case.sources = [case.path("given.txt")]
    case.path("given.txt").symlink_to(case.secret("given.txt"))
    case.options["expect_secret"] = True
    return "ok"


SYMLINKS = {
    "to a file outside": link(lambda c: c.secret("s.txt"), "symlinks"),
    "to json lines outside": link(
        lambda c: c.secret("s.jsonl", json.dumps({"text": SECRET}).encode() + b"\n"), "symlinks", "link.jsonl"
    ),
    "to parquet outside": link(lambda c: _secret_parquet(c), "symlinks", "link.parquet"),
    "relative, out": link(relative_secret, "symlinks"),
    "to /etc/passwd": link(lambda c: Path("/etc/passwd"), "symlinks"),
    "to a folder outside": link(outside_dir, "symlinks", "linked-folder"),
    "dangling": link(lambda c: c.box / "nowhere.txt", "symlinks"),
    "to a file inside": link(lambda c: _inside_file(c), "ok"),
    "to the folder itself": link(lambda c: c.src, "ok", "self"),
    "to its parent": link(lambda c: c.box, "symlinks", "parent"),
    "loop": loop,
    "fifo": fifo,
    "followed, to a file outside": link(lambda c: c.secret("f.txt"), "ok", follow=True),
    "followed, to a folder outside": link(outside_dir, "ok", "linked-folder", follow=True),
    "followed, to the folder itself": link(lambda c: c.src, "ok", "self", follow=True),
    "given as the source": given_as_file,
}


def _secret_parquet(case: Case) -> Path:
    target = case.secret("s.parquet")
    pq.write_table(pa.table({"text": [SECRET]}), target)
    return target


def _inside_file(case: Case) -> Path:
    case.path("real.txt").write_text(WORDS)
    return case.path("real.txt")


def named(name: bytes | str, data: bytes, expect: str):
    def make(rng, case: Case) -> str:
        path = os.fsencode(case.src) + b"/" + os.fsencode(case.prefix) + os.fsencode(name)
        Path(os.fsdecode(path)).write_bytes(data)
        return expect

    return make


NAMES = {
    "a line break in a name": named("line\nbreak.txt", WORDS.encode(), "ok"),
    "a binary file with a line break in its name": named("bin\nary.txt", b"\x00\x01" * 100, "binary"),
    "a name that is not utf-8": named(b"caf\xe9.txt", WORDS.encode(), "ok"),
    "a binary file named in latin-1": named(b"\xe9\x00x.txt".replace(b"\x00", b""), b"\x00" * 50, "binary"),
    "json lines with a line break in the name": named("a\nb.jsonl", b"not json\n", "refuse"),
    "an escape sequence in a name": named("\x1b[31mred.txt", WORDS.encode(), "ok"),
}

INGREDIENTS = [
    *((f"json line: {k}", jsonl(*v)) for k, v in JSON_LINES.items()),
    *((f"json.gz line: {k}", jsonl(*v, gz=True)) for k, v in list(JSON_LINES.items())[::7]),
    *((f"encoding: {k}", v) for k, v in ENCODINGS.items()),
    *((f"parquet: {k}", v) for k, v in PARQUET.items()),
    *((f"symlink: {k}", v) for k, v in SYMLINKS.items()),
    *((f"name: {k}", v) for k, v in NAMES.items()),
]


# --- running a case ------------------------------------------------------------------------------


def tree(path: Path) -> dict:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "other"
        for p in sorted(path.rglob("*"))
        if not p.relative_to(path).parts[0].startswith("out-")
    }


def outcome(case: Case, workers: int, tokenizer: str):
    """("ok", manifest, shards, log) or ("refused", message); raises what is neither."""
    out = case.box / f"out-{workers}"
    lines: list[str] = []
    options = {k: v for k, v in case.options.items() if k != "expect_secret"}
    try:
        m = prepare(
            [str(s) for s in case.sources],
            out,
            tokenizer,
            val_fraction=0.0,
            workers=workers,
            log=lines.append,
            **options,
        )
    except UserError as exc:
        return "refused", str(exc)
    shards = {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}
    log = [line for line in lines if not line.startswith("prepared ")]  # the last line has timings
    return "ok", {k: v for k, v in m.to_json().items() if k != "args"}, shards, log


def check(case: Case, expect: str, results: dict) -> list[str]:
    """What is wrong with a case's results (its two outcomes, the files it touched)."""
    problems = []
    one, two = results[1], results.get(2, results[1])
    if one != two:
        problems.append(f"1 and 2 workers differ: {str(one)[:200]} / {str(two)[:200]}")
    kind = one[0]
    for workers, result in results.items():
        out = case.box / f"out-{workers}"
        if result[0] == "refused":
            if "\n" in result[1] or "\r" in result[1] or SECRET in result[1]:
                problems.append(f"a refusal that is not one clean line: {result[1][:200]!r}")
            if out.exists():
                problems.append(f"a refusal left {sorted(p.name for p in out.iterdir())}")
        else:
            problems += _check_data_dir(case, out, result)
    if expect == "refuse" and kind != "refused":
        problems.append("accepted, but should be refused")
    if expect in ("ok", "binary", "symlinks", "surrogates") and kind != "ok":
        problems.append(f"refused, but should be read: {one[1]}")
    counted = {
        "binary": ("skipped", "binary_files"),
        "symlinks": ("skipped", "symlinks"),
        "surrogates": ("surrogates", "documents"),
    }
    if kind == "ok" and expect in counted:
        record, field = counted[expect]
        if not one[1].get(record, {}).get(field):
            problems.append(f"read, but {expect} not counted in the manifest: {one[1].get(record)}")
    return problems


def _check_data_dir(case: Case, out: Path, result) -> list[str]:
    problems = []
    if not (out / MANIFEST).is_file():
        problems.append("no manifest after a success")
    if any("\n" in line or "\r" in line for line in result[3]):
        problems.append(f"a log line of more than one line: {result[3]}")
    if not case.options.get("follow_symlinks") and not case.options.get("expect_secret"):
        m = read_manifest(out)
        ids = np.concatenate([np.asarray(s) for s in split_shards(out, m, "train")])
        if SECRET in load_tokenizer(m.tokenizer, out).decode(ids.tolist()):
            problems.append("the corpus holds text from outside the source folder")
    return problems


def build(box: Path, rng: random.Random, parts: list) -> tuple[Case, str]:
    """A source folder: a good text file (so skipping is no empty input), then each ingredient."""
    case = Case(box, "")
    case.src.mkdir(parents=True)
    case.outside.mkdir()
    (case.src / "good.txt").write_text(" ".join(text(rng) for _ in range(20)))
    expects = []
    for i, (_, make) in enumerate(parts):
        case.prefix = f"{i}-" if len(parts) > 1 else ""
        expects.append(make(rng, case))
    expect = expects[0] if len(expects) == 1 else "any"
    return case, expect


def _outside(case: Case) -> list[Path]:
    """What a case may read beyond its source folder: what its links lead to, when it follows them."""
    if case.options.get("follow_symlinks"):
        return [case.box, Path("/etc/passwd")]
    return [case.outside] if case.options.get("expect_secret") else []


def run_cases(tmp_path: Path, limit: int, seed: int, two_workers_every: int = 1) -> tuple[list[str], dict]:
    """Run `limit` cases, each with 1 worker and every `two_workers_every`-th also with 2 (a pool costs
    0.1 s to start and stop); the failures, and how many cases were prepared and refused.

    A case run with 2 workers uses GPT-2's tokenizer where it is cached: a bpe:N prepare reads every
    document in the parent first (to train the BPE), so its workers would never meet a bad input."""
    rng = random.Random(seed)
    cases = [[ingredient] for ingredient in INGREDIENTS]
    rng.shuffle(cases)
    while len(cases) < limit:  # the slow variant: two or three ingredients in one folder
        cases.append(rng.sample(INGREDIENTS, rng.choice([2, 2, 3])))
    failures, tally = [], {"ok": 0, "refused": 0}
    for i, parts in enumerate(cases[:limit]):
        what = " + ".join(name for name, _ in parts)
        box = tmp_path / f"case{i}"
        case, expect = build(box, rng, parts)
        before = tree(box)
        FILES.readable = readable_roots(case.src, box / "out-1", box / "out-2", *_outside(case))
        FILES.writable = tuple(os.path.realpath(box / f"out-{w}") for w in (1, 2))
        FILES.read_outside, FILES.written_outside = [], []
        results = {}
        both = i % two_workers_every == 0
        tokenizer = "gpt2" if both and GPT2_CACHED else "bpe:300"
        for workers in (1, 2) if both else (1,):
            FILES.armed = True
            try:
                results[workers] = outcome(case, workers, tokenizer)
            except Exception as exc:  # noqa: BLE001 - what the fuzz looks for
                results[workers] = ("crashed", f"{type(exc).__name__}: {str(exc)[:200]}")
                failures.append(f"{what}: {workers} worker(s): {results[workers][1]}")
            finally:
                FILES.armed = False
        if all(r[0] != "crashed" for r in results.values()):
            failures += [f"{what}: {p}" for p in check(case, expect, results)]
            tally[results[1][0]] += 1
        if FILES.read_outside:
            failures.append(f"{what}: read outside its folder: {sorted(set(FILES.read_outside))[:3]}")
        if FILES.written_outside:
            failures.append(f"{what}: wrote outside its out dir: {sorted(set(FILES.written_outside))[:3]}")
        if tree(box) != before:
            failures.append(f"{what}: changed its source or outside folder")
        shutil.rmtree(box)
    return failures, tally


def test_fuzzed_prepare_inputs_are_read_counted_or_refused_in_one_line(tmp_path):
    failures, tally = run_cases(tmp_path, limit=len(INGREDIENTS), seed=0, two_workers_every=3)
    assert not failures, "\n".join(failures[:20])
    assert tally["ok"] > 40 and tally["refused"] > 40  # the cases reach both outcomes


@pytest.mark.slow
def test_fuzzed_prepare_inputs_many_cases(tmp_path):
    failures, tally = run_cases(tmp_path, limit=1500, seed=1)
    print(f"fuzz prepare: {sum(tally.values())} cases, {tally['ok']} prepared, {tally['refused']} refused")
    assert not failures, "\n".join(failures[:20])
