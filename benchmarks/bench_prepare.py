"""prepare throughput vs raw tiktoken, and prepare's memory as the input grows tenfold.

Usage:
    python benchmarks/bench_prepare.py                 # throughput: raw tiktoken vs prepare, 1 and 2 workers
    python benchmarks/bench_prepare.py --memory        # peak RSS with 1x and 10x the input

The text is the shared corpora (Tiny Shakespeare, NLTK webtext, the C4 sample) repeated into
`--mb` megabytes of documents (one per paragraph), written as jsonl and as parquet with FineWeb's
columns. The raw baselines run tiktoken on one core over the same documents, in the same run:
its `encode_ordinary_batch(num_threads=1)` and a plain loop of `encode_ordinary`, which is faster;
per-worker rates are given against the faster one. prepare adds reading (JSON parsing, parquet
decoding), packing, splitting and writing shards, in worker processes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402  (also points tiktoken at the shared cache)


def corpus_documents() -> list[str]:
    corpora = SHARED / "corpora"
    if not corpora.is_dir():
        sys.exit(f"shared corpora not found at {corpora}")
    texts = [(corpora / "tinyshakespeare.txt").read_text()]
    texts += [p.read_text(errors="replace") for p in sorted((corpora / "webtext").glob("*.txt"))]
    for p in sorted((corpora / "c4-sample").glob("*.gz")):
        with gzip.open(p, "rt") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    return [d for t in texts for d in t.split("\n\n") if d.strip()]


def write_jsonl(path: Path, docs: list[str], megabytes: float) -> int:
    size, n = 0, 0
    with open(path, "w") as f:
        while size < megabytes * 1e6:
            for i, d in enumerate(docs):
                line = json.dumps({"text": f"{n}.{i} {d}"}) + "\n"  # a prefix so repeats differ a little
                f.write(line)
                size += len(line)
            n += 1
    return size


def write_parquet(path: Path, jsonl: Path) -> None:
    """The same documents as FineWeb lays them out: a `text` column among others, 1,000-row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [json.loads(line)["text"] for line in open(jsonl)]
    n = len(texts)
    pq.write_table(
        pa.table(
            {
                "text": texts,
                "id": [f"<urn:{i}>" for i in range(n)],
                "dump": ["CC-MAIN"] * n,
                "url": ["http://x"] * n,
                "date": ["2024"] * n,
                "file_path": ["s3://x"] * n,
                "language": ["en"] * n,
                "language_score": [0.9] * n,
                "token_count": [0] * n,
            }
        ),
        path,
        row_group_size=1000,
    )


RAW = """
import json, sys, time, tiktoken
texts = [json.loads(line)["text"] for line in open(sys.argv[1])]
enc = tiktoken.get_encoding("gpt2")
t = time.perf_counter()
if sys.argv[2] == "batch":
    n = sum(len(ids) + 1 for ids in enc.encode_ordinary_batch(texts, num_threads=1))
else:
    n = sum(len(enc.encode_ordinary(text)) + 1 for text in texts)
print(n / (time.perf_counter() - t))
"""

PREPARE = """
import sys, time, tiktoken
from baseforge.data.prepare import prepare
tiktoken.get_encoding("gpt2")  # the one-off tokenizer load (0.3 s) is startup, as for the raw rates
t = time.perf_counter()
m = prepare([sys.argv[1]], sys.argv[2], "gpt2", workers=int(sys.argv[3]), log=lambda *a: None)
print(m["tokens"] / (time.perf_counter() - t))
"""


def run_rate(code: str, *args) -> float:
    """A measurement in a fresh process, as `baseforge prepare` would run (the timer is inside)."""
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    return float(out.stdout.split()[-1])


def throughput(args) -> None:
    docs = corpus_documents()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {"jsonl": Path(tmp) / "corpus.jsonl", "parquet": Path(tmp) / "corpus.parquet"}
        size = write_jsonl(inputs["jsonl"], docs, args.mb)
        write_parquet(inputs["parquet"], inputs["jsonl"])
        rows = []
        for rep in range(args.repeats):
            raw = {
                "raw: encode_ordinary_batch(num_threads=1)": run_rate(RAW, inputs["jsonl"], "batch"),
                "raw: encode_ordinary, one text at a time": run_rate(RAW, inputs["jsonl"], "loop"),
            }
            best = max(raw.values())  # per-worker rates are measured against the faster raw rate
            rows += [(name, 1, rate, best) for name, rate in raw.items()]
            for fmt in args.formats:
                for workers in (1, 2):
                    rate = run_rate(PREPARE, inputs[fmt], Path(tmp) / f"out-{fmt}{workers}-{rep}", workers)
                    rows.append(
                        (f"prepare {fmt}, {workers} worker{'s' * (workers > 1)}", workers, rate, best)
                    )
            print(f"repeat {rep + 1}/{args.repeats} done", flush=True)
        print(f"input: {size / 1e6:.0f} MB of text as jsonl and as parquet; {args.repeats} repeat(s)\n")
        print(f"{'':<46}{'tokens/s':>12}{'per worker vs fastest raw':>28}")
        for name, workers, rate, raw in rows:
            print(f"{name:<46}{rate:>12,.0f}{rate / workers / raw:>27.0%}")


def memory(args) -> None:
    docs = corpus_documents()
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 10):
            src = Path(tmp) / f"corpus{scale}.jsonl"
            size = write_jsonl(src, docs, args.mb * scale)
            code = (
                "import resource, sys; sys.path.insert(0, %r); import common;"
                "from baseforge.data.prepare import prepare;"
                "m = prepare([%r], %r, 'gpt2', workers=2, shard_tokens=1_000_000, log=lambda *a: None);"
                "me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
                "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
                "print(m['tokens'], me, kids)"
            ) % (str(Path(__file__).parent), str(src), str(Path(tmp) / f"o{scale}"))
            tokens, me, kids = map(
                int,
                subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True, check=True
                ).stdout.split(),
            )
            print(
                f"{size / 1e6:6.0f} MB input, {tokens:>12,} tokens: peak RSS main {me / 1024:.0f} MB, "
                f"largest worker {kids / 1024:.0f} MB"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=20, help="input size in MB (memory: the 1x size)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--formats", default="parquet,jsonl", type=lambda v: v.split(","), help="input formats to time"
    )
    p.add_argument("--memory", action="store_true")
    args = p.parse_args()
    memory(args) if args.memory else throughput(args)


if __name__ == "__main__":
    main()
