"""prepare throughput vs raw tiktoken, and prepare's memory as the input grows tenfold.

Usage:
    python benchmarks/bench_prepare.py                 # throughput: raw tiktoken vs prepare, 1 and 2 workers
    python benchmarks/bench_prepare.py --memory        # peak RSS with 1x and 10x the input

The text is the shared corpora (Tiny Shakespeare, NLTK webtext, the C4 sample) repeated into a
jsonl file of `--mb` megabytes, one document per paragraph. The raw baseline is tiktoken's
`encode_ordinary_batch` on one thread over the same documents, in the same run; prepare adds
reading, packing, splitting and writing shards, in worker processes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
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


def throughput(args) -> None:
    import tiktoken

    from baseforge.data.prepare import prepare

    docs = corpus_documents()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "corpus.jsonl"
        size = write_jsonl(src, docs, args.mb)
        texts = [json.loads(line)["text"] for line in open(src)]
        enc = tiktoken.get_encoding("gpt2")
        rows = []
        for rep in range(args.repeats):
            t = time.perf_counter()
            n = sum(len(ids) + 1 for ids in enc.encode_ordinary_batch(texts, num_threads=1))
            raw = n / (time.perf_counter() - t)
            rows.append(("raw tiktoken, 1 thread", 1, raw, raw))
            for workers in (1, 2):
                out = Path(tmp) / f"out{workers}-{rep}"
                t = time.perf_counter()
                m = prepare([str(src)], out, "gpt2", workers=workers, log=lambda *a: None)
                rate = m["tokens"] / (time.perf_counter() - t)
                rows.append((f"prepare, {workers} worker(s)", workers, rate, raw))
        print(f"input: {size / 1e6:.0f} MB jsonl, {len(texts):,} documents, {n:,} tokens; {args.repeats} repeat(s)\n")
        print(f"{'':<26}{'tokens/s':>12}{'per worker vs raw':>20}")
        for name, workers, rate, raw in rows:
            print(f"{name:<26}{rate:>12,.0f}{rate / workers / raw:>19.0%}")


def memory(args) -> None:
    docs = corpus_documents()
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 10):
            src = Path(tmp) / f"corpus{scale}.jsonl"
            size = write_jsonl(src, docs, args.mb * scale)
            code = ("import resource, sys; sys.path.insert(0, %r); import common;"
                    "from baseforge.data.prepare import prepare;"
                    "m = prepare([%r], %r, 'gpt2', workers=2, shard_tokens=5_000_000, log=lambda *a: None);"
                    "me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
                    "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
                    "print(m['tokens'], me, kids)") % (str(Path(__file__).parent), str(src), str(Path(tmp) / f"o{scale}"))
            tokens, me, kids = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                       check=True).stdout.split())
            print(f"{size / 1e6:6.0f} MB input, {tokens:>12,} tokens: peak RSS main {me / 1024:.0f} MB, "
                  f"largest worker {kids / 1024:.0f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=20, help="input size in MB (memory: the 1x size)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--memory", action="store_true")
    args = p.parse_args()
    memory(args) if args.memory else throughput(args)


if __name__ == "__main__":
    main()
