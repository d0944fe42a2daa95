"""`baseforge judge`: score instruction-test answers with an LLM judge, all models side by side."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from baseforge.cli import VERBS
from baseforge.cli.options import add_json, non_negative_float, non_negative_int, positive_float, seed
from baseforge.errors import UserError
from baseforge.eval.judge import Cache, judge, load_answers, summarize
from baseforge.eval.judge_api import Backend, check_api_key
from baseforge.fileio import atomic_write_text, check_out_file

EPILOG = """\
examples:
  # OpenAI (or any OpenAI-compatible server): the key comes from $OPENAI_API_KEY
  baseforge judge runs/seed-ift/answers.jsonl runs/gpt2-ift/answers.jsonl --judge gpt-4.1
  # a local Ollama
  baseforge judge answers-*.jsonl --backend ollama --judge llama3.1:70b
  # any other OpenAI-compatible endpoint (vLLM, llama.cpp server, ...)
  baseforge judge a.jsonl b.jsonl --judge my-model --base-url http://127.0.0.1:8000/v1 --api-key-env NONE

Each item's answers from every model go into one prompt in a seeded shuffled order; the judge
returns scores 0-100. Replies are cached (--cache, default judge-cache.jsonl beside the first
answers file): a rerun sends no request it has already paid for, and an interrupted run resumes.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "judge",
        help=VERBS["judge"],
        description="Score instruction-test answers with an LLM judge.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("answers", nargs="+", type=Path, metavar="ANSWERS.jsonl")
    p.add_argument("--judge", required=True, metavar="MODEL", help="the judge model's name")
    p.add_argument("--backend", choices=["openai", "ollama"], default="openai")
    p.add_argument("--base-url", help="default: https://api.openai.com/v1 or http://localhost:11434")
    p.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key (NONE: send no key)",
    )
    p.add_argument("--cache", type=Path, help="cache file (JSON lines)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the per-item answer order")
    p.add_argument("--retries", type=non_negative_int, default=5)
    p.add_argument(
        "--backoff",
        type=non_negative_float,
        default=1.0,
        help="first retry delay in seconds (doubles each time)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=120.0,
        help="seconds per request, all of it (connect, headers and reply), not per socket read",
    )
    p.add_argument(
        "--max-retry-after",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="longest wait a server's Retry-After (or the backoff) may ask for (default 300)",
    )
    add_json(p, "the table as JSON")
    p.add_argument("--out", type=Path, help="write per-item scores here (JSON lines)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even if some items failed")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.out:
        check_out_file(args.out, args.overwrite)  # before any request: earlier scores are not lost
    items = load_answers(args.answers)
    key = None
    if args.backend == "openai" and args.api_key_env != "NONE":
        key = os.environ.get(args.api_key_env, "").strip()  # a trailing newline is not part of a key
        if not key:
            raise UserError(
                f"no API key: set ${args.api_key_env} (or --api-key-env NONE for a server without keys)"
            )
        key = check_api_key(key, f"${args.api_key_env}")
    base = args.base_url or (
        "https://api.openai.com/v1" if args.backend == "openai" else "http://localhost:11434"
    )
    backend = Backend(args.backend, args.judge, base, key, args.timeout)
    cache = Cache(args.cache or args.answers[0].parent / "judge-cache.jsonl")
    result = judge(
        items,
        backend,
        cache,
        seed=args.seed,
        retries=args.retries,
        backoff_s=args.backoff,
        max_retry_after_s=args.max_retry_after,
        log=lambda m: print(m, file=sys.stderr),
    )
    rows = summarize(result)
    if args.out:
        atomic_write_text(
            args.out,
            "".join(json.dumps({"id": i, "scores": s}) + "\n" for i, s in sorted(result.scores.items())),
        )
    if args.json:
        print(json.dumps({"models": rows, "failed": result.failed, "requests": result.requests}, indent=2))
    else:
        print(f"\n{'model':<28}{'mean':>8}{'95% CI':>18}{'n':>6}")
        for r in rows:
            print(f"{r['model']:<28}{r['mean']:>8.2f}   [{r['low']:6.2f}, {r['high']:6.2f}]{r['n']:>6}")
        print(f"{len(result.scores)} items judged, {result.requests} requests sent")
    if result.failed:
        ids = ", ".join(sorted(result.failed))
        print(
            f"{len(result.failed)} item(s) failed after {args.retries} retries and are left out: {ids}",
            file=sys.stderr,
        )
        return 0 if args.allow_failures else 1
    return 0
