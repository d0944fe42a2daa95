"""`baseforge harness`: the lm-eval adapter against baseforge's own scoring, on a tiny run."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from helpers import TINY, assert_clean_error, baseforge, cli_env

TASK_YAML = """\
task: hellaswag
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {path}
output_type: multiple_choice
validation_split: validation
process_docs: !function utils.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shakespeare_dir):
    from baseforge.overrides import resolve_config
    from baseforge.train.loop import Trainer

    run = tmp_path_factory.mktemp("harness") / "run"
    Trainer(
        resolve_config("cpu-tiny", None, [*TINY, "max_steps=2", "dropout=0"]),
        shakespeare_dir,
        run,
        log=lambda *a: None,
    ).run()
    return run


@pytest.fixture(scope="module")
def adapter(tiny_run):
    pytest.importorskip("lm_eval")
    from baseforge.eval.harness import make_lm
    from baseforge.eval.models import load_any

    return make_lm(load_any(str(tiny_run)), batch_size=3)


def test_harness_and_hellaswag_verbs_agree_on_local_data(tiny_run, shared_data, tmp_path):
    pytest.importorskip("lm_eval")
    hs = shared_data / "eval" / "hellaswag_val.jsonl.gz"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hellaswag.yaml").write_text(TASK_YAML.format(path=hs))
    (tasks / "utils.py").write_text("from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401\n")
    env = {**cli_env(), "HF_DATASETS_OFFLINE": "1"}
    import subprocess
    import sys

    harness = subprocess.run(
        [sys.executable, "-m", "baseforge", "harness", str(tiny_run), "--tasks", "hellaswag"]
        + ["--include-path", str(tasks), "--limit", "20", "--json", "--save-to", str(tiny_run)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert harness.returncode == 0, harness.stderr[-2000:]
    theirs = json.loads(harness.stdout)[0]
    ours = json.loads(baseforge("hellaswag", tiny_run, "--data", hs, "--limit", "20", "--json").stdout)[0]
    assert theirs["hellaswag acc"] == ours["acc"]
    assert theirs["hellaswag acc_norm"] == ours["acc_norm"]
    assert json.loads((tiny_run / "evals" / "harness.json").read_text())[0]["hellaswag acc"] == ours["acc"]


def test_loglikelihood_equals_baseforge_loss_on_the_same_tokens(adapter, shakespeare_dir):
    from baseforge.data.loader import TokenWindows
    from baseforge.eval.loss import heldout_loss

    model = adapter.model
    tokens = TokenWindows(shakespeare_dir, "val", 64).window(0).astype(int).tolist()  # 65 tokens
    loss = heldout_loss(model, shakespeare_dir, tokens=64, context=64, batch_size=1)["loss"]
    ((ll, _),) = adapter._loglikelihood_tokens([(None, tokens[:1], tokens[1:])])
    assert abs(-ll / 64 - loss) < 1e-4
    # the public API on text: the rolling log-likelihood of a text is the loss after end-of-text
    text = adapter.tok_decode(tokens[1:40])
    ids = adapter.tok_encode(text)
    with torch.no_grad():
        ref = model(torch.tensor([[adapter.eot_token_id] + ids[:-1]]), torch.tensor([ids]))[1].item()
    (rolling,) = adapter.loglikelihood_rolling([SimpleNamespace(args=(text,))])
    assert abs(-rolling / len(ids) - ref) < 1e-4


def test_long_text_rolls_over_windows_and_batches_change_nothing(adapter):
    text = "To be, or not to be, that is the question. " * 20  # several 64-token windows
    ids = adapter.tok_encode(text)
    assert len(ids) > 2 * 64
    (rolling,) = adapter.loglikelihood_rolling([SimpleNamespace(args=(text,))])
    total, done = 0.0, 0
    with torch.no_grad():  # each token once, with as much context as fits (lm-eval's windows)
        seq = [adapter.eot_token_id] + ids
        while done < len(ids):
            end = min(done + 64, len(ids))
            inp = seq[max(0, end - 64) : end]
            logp = torch.log_softmax(adapter.model(torch.tensor([inp]))[0][0].float(), -1)
            tgt = ids[max(0, end - 64) : end]
            picked = logp.gather(1, torch.tensor(tgt)[:, None]).squeeze(1)
            total += picked[len(tgt) - (end - done) :].sum().item()
            done = end
    assert abs(rolling - total) < 1e-3
    reqs = [SimpleNamespace(args=("KING RICHARD", c)) for c in (" II", ":", " III of England", "")]
    batched = adapter.loglikelihood(reqs)
    single = [adapter.loglikelihood([r])[0] for r in reqs]
    assert all(abs(a[0] - b[0]) < 1e-4 and a[1] == b[1] for a, b in zip(batched, single))


def test_generate_until_is_greedy_generation_cut_at_the_stop_string(adapter):
    from baseforge.generate import generate

    prompts = ["KING", "QUEEN", "ROMEO:\n", "KING"]
    reqs = [SimpleNamespace(args=(p, {"until": ["\n\n"], "max_gen_toks": 12})) for p in prompts]
    out = adapter.generate_until(reqs)
    for prompt, text in zip(prompts, out):
        ids = generate(adapter.model, adapter.tok_encode(prompt), 12, temperature=0)
        expected = adapter.tok_decode(ids)
        expected = expected[: expected.index("\n\n")] if "\n\n" in expected else expected
        assert text == expected
    assert out[0] == out[3]


def test_missing_extra_is_one_line(tiny_run, tmp_path):
    blocker = tmp_path / "block"
    (blocker / "lm_eval").mkdir(parents=True)
    (blocker / "lm_eval" / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
    env = cli_env()
    env["PYTHONPATH"] = str(blocker) + os.pathsep + env["PYTHONPATH"]
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "baseforge", "harness", str(tiny_run), "--tasks", "hellaswag"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert_clean_error(result, 'pip install "baseforge[harness]"')
