"""Mixtures of data dirs: the realised shares, the per-source validation slices, exact resume, one process
against two, and a resume on other weights refused unless asked for (then exact from that step on)."""

from __future__ import annotations

import hashlib
import json
import math
import signal
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from baseforge.data.mixture import parse_sources, route, windows_taken
from baseforge.errors import UserError
from baseforge.train.checkpoint.format import find_checkpoint
from baseforge.train.metrics import read_metrics
from conftest import build_data_dir
from helpers import TINY, assert_clean_error, baseforge, popen, sets, torchrun


@pytest.mark.parametrize("seed", range(12))
def test_every_prefix_holds_each_sources_share_within_the_stated_bound(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    weights = rng.dirichlet(np.ones(n) * 0.7) + 1e-3
    weights = list(weights / weights.sum())
    j = np.arange(int(rng.integers(500, 5000)))
    source, index = route(j, weights)
    taken = np.zeros(n, dtype=np.int64)
    bound = max(1, math.ceil(math.log2(n)))  # the module docstring's bound: the tree's depth
    for s in range(n):  # each source's windows, in order, are its own stream's 0, 1, 2, ...
        assert np.array_equal(index[source == s], np.arange((source == s).sum()))
    counts = np.stack([np.cumsum(source == s) for s in range(n)], axis=1)  # after each window
    error = np.abs(counts - np.outer(j + 1, weights))
    assert error.max() < bound, (error.max(), bound, n)
    taken = windows_taken(len(j), weights)
    assert taken == counts[-1].tolist()
    # Pure function of j: any slice of the stream routes as the whole did.
    a, b = sorted(rng.integers(0, len(j), 2))
    part = route(j[a:b], weights)
    assert np.array_equal(part[0], source[a:b]) and np.array_equal(part[1], index[a:b])


class _Numbered:
    """A source stream whose window k is the row [k, k, ...]: what a mixture asks of each source."""

    tokens = 0

    def rows(self, k):
        return np.repeat(np.asarray(k)[:, None], 3, axis=1)


def test_after_a_change_of_weights_each_source_goes_on_where_it_stopped():
    from baseforge.data.mixture import MixtureStream, Segment

    before = windows_taken(1000, [0.9, 0.1])
    stream = MixtureStream([_Numbered(), _Numbered()], [0.1, 0.9], 2, Segment(1000, tuple(before)))
    x, _ = stream.batch(1000, 1000)
    source, _ = route(np.arange(1000), [0.1, 0.9])
    for s in range(2):  # the next windows of each source's own stream, none read twice, none skipped
        got = x[torch.from_numpy(source == s), 0].tolist()
        assert got == list(range(before[s], before[s] + len(got)))
    assert stream.windows_read(2000) == [before[0] + (source == 0).sum(), before[1] + (source == 1).sum()]


def test_two_sources_stay_within_one_window():
    source, _ = route(np.arange(10_000), [0.7, 0.3])
    assert np.abs(np.cumsum(source == 0) - 0.7 * np.arange(1, 10_001)).max() < 1


def test_data_values_parse_to_normalised_named_sources(tmp_path):
    (tmp_path / "web").mkdir()
    (tmp_path / "code").mkdir()
    got = parse_sources([f"{tmp_path}/web:3", f"{tmp_path}/code:1"])
    assert [s.weight for s in got] == [0.75, 0.25] and [s.name for s in got] == ["web", "code"]
    assert parse_sources([tmp_path / "web"])[0].weight == 1.0
    for bad, needle in (
        ([f"{tmp_path}/web:1e308", f"{tmp_path}/code:1e308"], "finite"),
        ([f"{tmp_path}/web:5e-324", f"{tmp_path}/code:1"], "none under"),
        (["a\x00b"], "not a usable path"),
        ([f"{tmp_path}/web:0.5", f"{tmp_path}/code"], "has no weight"),
        ([f"{tmp_path}/web:-1"], "positive"),
        ([f"{tmp_path}/web:1", f"{tmp_path}/web:1"], "twice"),
    ):
        with pytest.raises(UserError, match=needle):
            parse_sources(bad)


@pytest.fixture(scope="module")
def three(shared_data, tmp_path_factory):
    """Three data dirs with one tokenizer: two of Shakespeare, and a small one that wraps often."""
    from baseforge.tokenizer import TrainedBPETokenizer

    text = (shared_data / "corpora" / "tinyshakespeare.txt").read_text()
    root = tmp_path_factory.mktemp("mix")
    tok = TrainedBPETokenizer.train([d for d in text.split("\n\n") if d.strip()][:2000], 512)
    half = len(text) // 2
    return [
        build_data_dir(root / "first", text[:half], tok=tok),
        build_data_dir(root / "second", text[half:], tok=tok),
        build_data_dir(root / "small", text[:3_000], tok=tok, val_every=3),  # ~15 windows of 64
    ]


COMMON = [*TINY, "dropout=0", "micro_batch=2", "global_batch=8", "checkpoint_every=4", "dist_timeout_s=60"]
ROUND2 = ["packing=bestfit", "batch_schedule=2@256,4@768"]


def mix(dirs, weights=(0.5, 0.3, 0.2)):
    return [arg for d, w in zip(dirs, weights) for arg in ("--data", f"{d}:{w}")]


def curve(run):
    return [(r.step, r.loss) for r in read_metrics(run) if r.loss is not None]


def test_each_source_is_scored_on_the_same_tokens_whatever_the_weights(three, tmp_path):
    runs = {}
    for name, weights in (("a", (0.5, 0.3, 0.2)), ("b", (0.1, 0.1, 0.8))):
        runs[name] = tmp_path / name
        result = baseforge("train", *mix(three, weights), "--out", runs[name], *sets(*COMMON, "max_steps=4"))
        assert result.returncode == 0, result.stderr[-3000:]
        assert "small: weight" in result.stdout and "passes over" in result.stdout
    rows = {name: [r for r in read_metrics(run) if r.val_loss is not None][0] for name, run in runs.items()}
    for name in ("first", "second", "small"):  # step 0: the same model, so the same per-source loss
        assert rows["a"].evals[f"val_loss/{name}"] == rows["b"].evals[f"val_loss/{name}"]
    a = rows["a"]
    mixed = (
        0.5 * a.evals["val_loss/first"] + 0.3 * a.evals["val_loss/second"] + 0.2 * a.evals["val_loss/small"]
    )
    assert a.val_loss == pytest.approx(mixed)
    record = json.loads((runs["a"] / "data.json").read_text())
    assert [s["weight"] for s in record["sources"]] == pytest.approx([0.5, 0.3, 0.2])
    # `eval` on the three dirs: a column per source, the run's own per-source losses at its last step.
    scored = baseforge("eval", runs["a"], "--data", *three[:1], "--data", three[1], "--data", three[2],
                       "--tokens", "2048", "--json", "--save-to", runs["a"])  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-2000:]
    (got,) = json.loads(scored.stdout)
    last = [r for r in read_metrics(runs["a"]) if r.val_loss is not None][-1]
    for name in ("first", "second", "small"):
        assert got[f"loss/{name}"] == pytest.approx(last.evals[f"val_loss/{name}"], abs=1e-4)
    # The report page: the mixture (sources, weights, passes) and a loss column per source.
    summary = json.loads((runs["a"] / "summary.json").read_text())
    assert [s["name"] for s in summary["sources"]] == ["first", "second", "small"]
    assert summary["sources"][2]["passes"] > summary["sources"][0]["passes"]  # the small one, read sooner
    assert baseforge("report", runs["a"]).returncode == 0
    page = (runs["a"] / "report.md").read_text()
    assert "## Data: a mixture" in page and "| val: small |" in page


def test_a_mixture_resumes_exactly_after_sigkill(three, tmp_path):
    args = [*mix(three), *sets(*COMMON, *ROUND2, "max_steps=12")]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert baseforge("train", *args, "--out", ref).returncode == 0
    proc = popen("train", *args, "--out", cut)
    latest = cut / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    resumed = baseforge("train", *mix(three), "--out", cut, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert curve(cut) == curve(ref)
    passes = {s["name"]: s["passes"] for s in json.loads((ref / "summary.json").read_text())["sources"]}
    assert passes["small"] > 1 > passes["first"]  # the small source wrapped into its next epochs
    a, b = (load_file(str(find_checkpoint(r) / "model.safetensors")) for r in (ref, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_match_one_on_a_mixture(three, tmp_path):
    args = [*mix(three), *sets(*COMMON, *ROUND2, "max_steps=6")]
    one, two = tmp_path / "one", tmp_path / "two"
    assert baseforge("train", *args, "--out", one).returncode == 0
    result = torchrun(2, "train", *args, "--out", two)
    assert result.returncode == 0, result.stderr[-3000:]
    ours, theirs = curve(two), curve(one)
    assert [s for s, _ in ours] == [s for s, _ in theirs]
    assert [v for _, v in ours] == pytest.approx([v for _, v in theirs], rel=1e-4, abs=1e-4)


def digest(run):
    return {
        p.relative_to(run): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def test_other_weights_on_resume_are_refused_untouched_then_continue_exactly_when_asked(three, tmp_path):
    run = tmp_path / "run"
    assert baseforge("train", *mix(three), "--out", run, *sets(*COMMON, "max_steps=12")).returncode == 0
    (run / "checkpoints" / "latest").write_text("step_0000004\n")  # back to step 4
    before = digest(run)
    longer: list[str] = []
    refused = baseforge("train", *mix(three, (0.2, 0.2, 0.6)), "--out", run, "--resume", *longer)
    assert_clean_error(refused, "other weights", "--new-data")
    assert digest(run) == before
    added = baseforge("train", *mix(three[:2], (0.5, 0.5)), "--out", run, "--resume", *longer)
    assert_clean_error(added, "--new-data")
    assert digest(run) == before
    # Asked for: it continues from step 4 on the new mixture, and that continuation is itself exact.
    switch = ("train", *mix(three, (0.2, 0.2, 0.6)), "--out", run, "--resume", "--new-data", *longer)
    assert baseforge(*switch).returncode == 0
    record = json.loads((run / "data.json").read_text())
    assert record["changes"][0]["step"] == 4
    assert [s["weight"] for s in record["changes"][0]["sources"]] == pytest.approx([0.2, 0.2, 0.6])
    # Each source went on where it stopped at step 4 (32 windows at 0.5/0.3/0.2), not re-reading its epoch.
    from baseforge.launch import mixture_segment
    from baseforge.overrides import resolve_config

    config = resolve_config(None, None, [*COMMON, "max_steps=12"])
    segment = mixture_segment(run, parse_sources(mix(three, (0.2, 0.2, 0.6))[1::2]), config, True)
    assert segment.start == 32 and list(segment.offsets) == windows_taken(32, [0.5, 0.3, 0.2])
    full = curve(run)
    (run / "checkpoints" / "latest").write_text("step_0000008\n")
    again = baseforge("train", "--out", run, "--resume")  # the record's new mixture, without --data
    assert again.returncode == 0, again.stderr[-3000:]
    assert curve(run) == full


def test_a_recipe_names_its_mixture_in_the_same_syntax(three, tmp_path):
    recipe = tmp_path / "mix.toml"
    listed = ", ".join(f'"{d}:{w}"' for d, w in zip(three, (0.5, 0.3, 0.2)))
    recipe.write_text(f"data = [{listed}]\n[train]\nmax_steps = 2\n")
    result = baseforge("train", "--config", recipe, "--out", tmp_path / "run", "--dry-run", *sets(*COMMON))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "a mixture of 3 sources" in result.stdout and "small: weight 0.200" in result.stdout
    recipe.write_text("data = [1, 2]\n")
    bad = baseforge("train", "--config", recipe, "--out", tmp_path / "bad", "--dry-run")
    assert_clean_error(bad, "data must be")
