"""The GPU suite's tables: one markdown page from the parts' records, and the merge of the calls'
--out folders into benchmarks/results/gpu-<gpu name>.{md,json} (the files that get committed)."""

from __future__ import annotations

import json
import re
from pathlib import Path


def fmt(x, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def _status(record: dict) -> str:
    extra = f": {record['reason'][:300]}" if record.get("reason") else ""
    return (
        f"{record['status']} in {record.get('seconds', 0):.0f} s (budget {record['budget_s']:.0f} s){extra}"
    )


def _throughput_rows(records: list[dict]) -> list[str]:
    rows = [r["result"] for r in records if r["part"].startswith("throughput-") and r["status"] == "ok"]
    if not rows:
        return []
    out = ["", "## Throughput (bf16 + compile, micro-batch by search)", ""]
    out += ["| preset | vocab | tokens/s | MFU | peak reserved | micro x accum | context |"]
    out += ["|---|---:|---:|---:|---:|---:|---:|"]
    for t in rows:
        mfu = fmt(100 * t["mfu"], ".1f") + "%" if t.get("mfu") is not None else "-"
        out.append(
            f"| {t['preset']} | {t.get('vocab_size', '-')} | {fmt(t['tokens_per_s'])} | {mfu} "
            f"| {t['peak_reserved_gib']:.1f} GiB | {t['micro_batch']} x {t['grad_accum']} | {t['context']} |"
        )
    return out


def _peer_rows(records: list[dict]) -> list[str]:
    by = {r["part"]: r for r in records}
    ref = (by.get("throughput-gpt2-124m") or {}).get("result")  # only an ok record has a result
    peers = [(name, by[name].get("result") or {}) for name in ("nanogpt", "llmc") if name in by]
    if not ref or not peers:
        return []
    out = ["", "## gpt2-124m against nanoGPT and llm.c (same shape, config, tokens, GPU)", ""]
    out += ["| trainer | tokens/s | baseforge / it |", "|---|---:|---:|"]
    out.append(f"| baseforge | {fmt(ref['tokens_per_s'])} | 1.00 |")
    for name, result in peers:
        ratio = result.get(f"baseforge_over_{name}")
        shown = result.get("skipped") or fmt(ratio, ".2f")
        out.append(f"| {name} | {fmt(result.get('tokens_per_s'))} | {shown} |")
    return out


def _quality_rows(records: list[dict]) -> list[str]:
    q = next((r.get("result") for r in records if r["part"] == "quality"), None)
    if not q:
        return []
    out = ["", f"## Quality race: same data and tokens ({fmt(q['equal_tokens'])})", ""]
    out += [
        "| recipe | val @ equal time | val @ equal tokens | final val | tokens/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in q["recipes"].items():
        out.append(
            f"| {name} | {fmt(v['val_loss_at_equal_time'], '.4f')} "
            f"| {fmt(v['val_loss_at_equal_tokens'], '.4f')} | {fmt(v['final_val_loss'], '.4f')} "
            f"| {fmt(v['tokens_per_s'])} |"
        )
    return out


def markdown(records: list[dict]) -> str:
    env = next((r.get("result") for r in records if r["part"] == "env"), None) or {}
    quick = any(r.get("quick") for r in records)
    lines = [f"# GPU suite on {env.get('device', '?')}", ""]
    if env:
        lines.append(f"torch {env.get('torch')}, CUDA {env.get('cuda')}, {env.get('memory_gib', '-')} GiB.")
    if quick:
        lines.append("QUICK (CPU, tiny shapes): a rehearsal of the code paths, not GPU figures.")
    lines += ["", "| part | call | status |", "|---|---:|---|"]
    lines += [f"| {r['part']} | {r['call']} | {_status(r)} |" for r in records]
    lines += _throughput_rows(records) + _peer_rows(records) + _quality_rows(records)
    tests = next((r for r in records if r["part"] == "tests"), None)
    counted = tests and (tests.get("result") or tests.get("partial"))
    if counted and "counts" in counted:
        lines += ["", "## CUDA tests", "", f"`pytest -m cuda` ({tests['status']}): {counted['counts']}"]
        lines += [f"- failed: {name}" for name in counted["failed"]]
    return "\n".join(lines) + "\n"


def merge(folders: list[Path], results: Path) -> Path:
    """Every part's record from the calls' folders (the latest record of a part wins) into one page."""
    from baseforge.fileio import atomic_write_json, atomic_write_text

    records = {}
    for folder in folders:
        for path in sorted(folder.glob("*-*.json")):
            record = json.loads(path.read_text())
            if isinstance(record, dict) and "part" in record:
                records[record["part"]] = record
    if not records:
        raise SystemExit(f"gpu_suite: no part results in {', '.join(map(str, folders))}")
    listed = list(records.values())
    if any(r.get("quick") for r in listed):
        raise SystemExit("gpu_suite: --quick results are rehearsals, not GPU figures; not merged")
    env = (records.get("env") or {}).get("result") or {}
    name = re.sub(r"[^a-z0-9]+", "-", str(env.get("device", "unknown")).lower()).strip("-")
    stem = results / f"gpu-{name}"
    atomic_write_json(stem.with_suffix(".json"), {"parts": listed})
    atomic_write_text(stem.with_suffix(".md"), markdown(listed))
    quality = (records.get("quality") or {}).get("result")
    if quality:  # drawn here from the part's JSON: the device brings back 8 files at most
        from gpu_quality import chart

        chart(quality, Path(f"{stem}-quality.png"))
    return stem
