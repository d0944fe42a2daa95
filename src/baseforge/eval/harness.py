"""EleutherAI's lm-evaluation-harness over baseforge's own model loading.

`BaseforgeLM` (built by `make_lm`) is an lm-eval `LM` over any model `eval.models.load_any` reads:
run dirs, checkpoint dirs (the modern presets too: rotary, RMSNorm, ...), hf:DIR folders with
their own tokenizer. It implements lm-eval's three request types:

- loglikelihood: continuation log-probability and whether greedy decoding would produce it;
  requests are sorted by length and scored in padded batches (context and continuation split as
  lm-eval's own models do: the whole text is encoded, the context's tokens are cut off).
- loglikelihood_rolling: a whole text in disjoint windows of the model's context (lm-eval's
  rolling windows), first token conditioned on end-of-text.
- generate_until: greedy (or sampled) continuations through one batched KV cache per group of
  equal-length prompts (baseforge.generate.generate_batch), stopped at the `until` strings or
  end-of-text.

lm_eval is an optional dependency (`pip install "baseforge[harness]"`), imported only here.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
from dataclasses import dataclass, field

from baseforge.errors import UserError
from baseforge.eval.scoring import score_tokens
from baseforge.generate import generate_batch

INSTALL_HINT = 'lm-evaluation-harness is not installed: pip install "baseforge[harness]"'


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.api.model import TemplateLM
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return TemplateLM


def _stop_at(text: str, until: list[str]) -> str | None:
    cuts = [text.find(u) for u in until if u and u in text]
    return text[: min(cuts)] if cuts else None


def make_lm(loaded, batch_size: int = 8, device="cpu", max_gen_toks: int = 256):
    """An lm-eval LM over a `LoadedModel` (eval.models.load_any)."""
    TemplateLM = require_lm_eval()

    # mypy takes no base class from a variable; this one is imported on demand (lm-eval is optional).
    class BaseforgeLM(TemplateLM):  # type: ignore[valid-type, misc]
        def __init__(self):
            super().__init__()
            self.model, self.tok = loaded.model.eval(), loaded.tokenizer
            self.batch_size, self._device, self.max_gen_toks = batch_size, device, max_gen_toks
            if self.tok.eot_id is None:
                raise UserError(f"{loaded.name}: its tokenizer has no end-of-text token, which lm-eval needs")

        @property
        def eot_token_id(self) -> int:
            return self.tok.eot_id

        @property
        def max_length(self) -> int:
            return self.model.config.context

        @property
        def tokenizer_name(self) -> str:
            return self.tok.name

        def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
            return self.tok.encode(string)

        def tok_decode(self, ids) -> str:
            return self.tok.decode(ids)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
            pairs = [(ctx, cont) for _, ctx, cont in requests]
            scored = score_tokens(self.model, pairs, self.batch_size, self._device)
            return [(s.logprob, s.greedy) for s in scored]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            texts = [text for (text,) in (req.args for req in requests)]
            return rolling_loglikelihoods(self.model, self.tok, texts, self.batch_size, self._device)

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            return generate_all(self, [req.args for req in requests], generate_batch)

    return BaseforgeLM()


def rolling_loglikelihoods(model, tok, texts: list[str], batch_size: int, device) -> list[float]:
    """Each text's whole log-likelihood, scored in lm-eval's disjoint rolling windows of the context."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    pairs, owner = [], []
    for n, text in enumerate(texts):
        windows = get_rolling_token_windows(tok.encode(text), tok.eot_id, model.config.context, context_len=1)
        for window in map(make_disjoint_window, windows):
            pairs.append(window)
            owner.append(n)
    totals = [0.0] * len(texts)
    for n, s in zip(owner, score_tokens(model, pairs, batch_size, device)):
        totals[n] += s.logprob
    return totals


def generate_all(lm, args: list[tuple[str, dict]], generate_batch) -> list[str]:
    """Continuations for (context, gen_kwargs) pairs, batched by prompt length and settings."""
    groups: dict[tuple, list[int]] = {}
    prompts, settings = [], []
    for n, (context, kwargs) in enumerate(args):
        kwargs = dict(kwargs or {})
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = min(int(kwargs.get("max_gen_toks", lm.max_gen_toks)), lm.max_length - 1)
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
        ids = (lm.tok_encode(context) or [lm.eot_token_id])[-(lm.max_length - max_new) :]
        prompts.append(ids)
        settings.append((tuple(until), max_new, temperature))
        groups.setdefault((len(ids), settings[-1]), []).append(n)
    out = [""] * len(args)
    for (_, (until, max_new, temperature)), members in groups.items():
        for start in range(0, len(members), lm.batch_size):
            chunk = members[start : start + lm.batch_size]

            def done(row: int, new: list[int], until=until) -> bool:
                return new[-1] == lm.eot_token_id or _stop_at(lm.tok_decode(new), list(until)) is not None

            rows = generate_batch(
                lm.model,
                [prompts[i] for i in chunk],
                max_new,
                temperature,
                seed=1234,
                done=done,
                device=lm._device,
            )
            for i, new in zip(chunk, rows):
                new = new[:-1] if new and new[-1] == lm.eot_token_id else new
                text = lm.tok_decode(new)
                stopped = _stop_at(text, list(until))
                out[i] = stopped if stopped is not None else text
    return out


@dataclass
class HarnessResult:
    model: str
    metrics: dict[str, float] = field(default_factory=dict)  # "task metric" -> value
    stderr: dict[str, float] = field(default_factory=dict)


def flatten(name: str, results: dict) -> HarnessResult:
    """lm-eval's {"task": {"acc,none": v, "acc_stderr,none": s, ...}} as "task metric" keys."""
    out = HarnessResult(name)
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or metric == "sample_len":
                continue
            label = f"{task} {metric}" + (f" ({filt})" if filt and filt != "none" else "")
            if metric.endswith("_stderr"):
                out.stderr[label.replace("_stderr", "")] = value
            else:
                out.metrics[label] = value
    return out


@contextlib.contextmanager
def _quiet_git_probe():
    """lm-eval records the git commit of the working folder with `git describe`, whose stderr
    ("fatal: not a git repository") reaches the user outside a repository: the same probe, quiet."""
    import lm_eval.evaluator as evaluator

    def git_commit_hash() -> str | None:
        try:
            probe = subprocess.run(
                ["git", "describe", "--always"], capture_output=True, text=True, check=False
            )
        except OSError:  # no git
            return None
        return probe.stdout.strip() or None if probe.returncode == 0 else None

    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:  # another lm-eval version: nothing to quieten
        yield
        return
    evaluator.get_git_commit_hash = git_commit_hash
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def run_harness(
    loaded,
    tasks: list[str],
    limit: int | None = None,
    include_paths: list[str] | None = None,
    batch_size: int = 8,
    device="cpu",
    num_fewshot: int | None = None,
) -> HarnessResult:
    """Score one loaded model on lm-eval tasks (task names, or local task YAMLs via include_paths)."""
    lm = make_lm(loaded, batch_size, device)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_paths or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown lm-eval task(s): {', '.join(unknown)}; see `lm-eval ls tasks`")
    try:
        with _quiet_git_probe():
            results = simple_evaluate(
                model=lm,
                tasks=tasks,
                limit=limit,
                task_manager=manager,
                num_fewshot=num_fewshot,
                log_samples=False,
                bootstrap_iters=1000,
            )
    except (ConnectionError, OSError) as exc:
        raise UserError(
            f"lm-eval could not load a task's data ({type(exc).__name__}: {str(exc)[:160]}); "
            "offline, point a local task YAML at your files (see `baseforge harness --help`)"
        ) from None
    flat = flatten(loaded.name, results["results"])
    flat.metrics = {k: v for k, v in flat.metrics.items() if not math.isnan(v)}
    return flat
