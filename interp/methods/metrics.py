"""The metrics every method scores with, in one place: logit difference, probability, log-probability, rank, KL.

A metric maps the logits at the scored position of a batch, ``logits [B, vocab]``, the target token ids
``target [B]`` and, for a logit difference, the contrast ids ``wrong [B]`` (else None) to one value per row
``[B]``. Every method that scores a target accepts a metric name from :data:`METRICS` or a callable of that
signature (:data:`MetricFn`); :func:`check_metric` runs a callable once on zero logits before any forward pass,
so a metric that raises or returns the wrong shape is a clear :class:`~interp.errors.ParameterError` up front,
and :func:`score` names the prompts of a batch where a callable raises during the run.

KL divergences are in nats (:func:`kl_divergence`), everywhere in the package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import ParameterError, check_choice

MetricFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
METRICS = ("logit_diff", "prob", "logprob", "rank", "logit")
NEEDS_WRONG = ("logit_diff",)
UNITS = {"logit_diff": "logits", "prob": "probability", "logprob": "nats", "rank": "rank", "logit": "logits"}


def logit(logits: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor | None = None) -> torch.Tensor:
    """The target's logit."""
    return logits.float().gather(-1, target[:, None])[:, 0]


def logit_diff(logits: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor | None) -> torch.Tensor:
    """logit(target) - logit(wrong)."""
    if wrong is None:
        raise ParameterError("The logit difference needs a contrast answer: give wrong='<field>'.")
    return logit(logits, target) - logit(logits, wrong)


def logprob(logits: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor | None = None) -> torch.Tensor:
    """log p(target), in nats."""
    return logits.float().log_softmax(-1).gather(-1, target[:, None])[:, 0]


def prob(logits: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor | None = None) -> torch.Tensor:
    """p(target)."""
    return logprob(logits, target).exp()


def rank(logits: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor | None = None) -> torch.Tensor:
    """1 + the number of tokens with a larger logit than the target's (1 = top), as float."""
    t = logit(logits, target)
    return (logits.float() > t[:, None]).sum(-1).to(torch.float32) + 1.0


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, *, eps: float = 0.0) -> torch.Tensor:
    """KL(p || q) in nats over the last axis, from logits, computed in float32 or the inputs' wider dtype (pass
    float64 logits for small KLs). With ``eps`` > 0, ``eps`` is added to both probability vectors first (Zhou et
    al.'s code adds 1e-12)."""
    dtype = torch.promote_types(torch.promote_types(p_logits.dtype, q_logits.dtype), torch.float32)
    if eps:
        p = p_logits.to(dtype).softmax(-1) + eps
        q = q_logits.to(dtype).softmax(-1) + eps
        return (p * (p.log() - q.log())).sum(-1)
    lp = p_logits.to(dtype).log_softmax(-1)
    lq = q_logits.to(dtype).log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats over the last axis."""
    lp = logits.float().log_softmax(-1)
    return -(lp.exp() * lp).sum(-1)


_BY_NAME: dict[str, MetricFn] = {"logit_diff": logit_diff, "prob": prob, "logprob": logprob, "rank": rank,
                                 "logit": logit}


def resolve(metric: str | MetricFn, *, allowed: Sequence[str] = METRICS) -> MetricFn:
    """The metric function for a name (checked against ``allowed``) or a callable (returned as it is)."""
    if callable(metric):
        return metric
    check_choice("metric", metric, allowed)
    return _BY_NAME[metric]


def unit_of(metric: str | MetricFn) -> str:
    """The unit a metric's values are in (recorded in a Result's meta as ``metric_unit``)."""
    return "the metric function's" if callable(metric) else UNITS[metric]


def metric_label(metric: str | MetricFn) -> str:
    """How a metric is recorded in meta (``metric``): its name, or the callable's qualified name."""
    if isinstance(metric, str):
        return metric
    return f"{getattr(metric, '__module__', '?')}.{getattr(metric, '__qualname__', type(metric).__name__)}"


def check_metric(metric: Any, *, vocab_size: int, n: int = 2, device: Any = "cpu", dtype: Any = torch.float32,
                 needs_grad: bool = False, has_wrong: bool = False, allowed: Sequence[str] = METRICS
                 ) -> str | MetricFn:
    """Validate a metric before any forward pass: a name among ``allowed``, or a callable that, on zero logits
    ``[n, vocab]``, returns a tensor of shape ``(n,)`` (differentiable in the logits with ``needs_grad``)."""
    if not callable(metric):
        check_choice("metric", metric, allowed)
        if metric in NEEDS_WRONG and not has_wrong:
            raise ParameterError(f"metric={metric!r} needs a contrast answer: give wrong='<field>' naming a field "
                                 "of the prompts.")
        return metric
    probe = torch.zeros(n, vocab_size, device=device, dtype=dtype, requires_grad=needs_grad)
    target = torch.zeros(n, dtype=torch.long, device=device)
    wrong = torch.ones(n, dtype=torch.long, device=device) if has_wrong else None
    try:
        with torch.enable_grad():
            out = metric(probe, target, wrong)
    except Exception as exc:  # noqa: BLE001 - a user function: report what it raised
        raise ParameterError(f"The metric function fails on logits of shape {tuple(probe.shape)}: "
                             f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n,):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ParameterError(f"The metric must return one scalar per prompt (a tensor of shape ({n},) for logits of "
                             f"shape {tuple(probe.shape)}); it returned {shape}.")
    if needs_grad and not out.requires_grad:
        raise ParameterError("This method needs a metric that is differentiable in the logits; this metric's output "
                             "carries no gradient (argmax, comparisons, .item() or detach?).")
    return metric


def score(metric: str | MetricFn, logits: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor | None = None,
          *, prompt_ids: Sequence[str] | None = None) -> torch.Tensor:
    """The metric of a batch, one value per row. A callable that raises is reported naming the batch's prompts
    (the caller's ``hooked`` context removes its hooks on the way out)."""
    fn = resolve(metric)
    try:
        return fn(logits, target, wrong)
    except ParameterError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user function: say where it failed
        if not callable(metric) or isinstance(metric, type):
            raise
        where = f" on the batch of prompts {list(prompt_ids)[:8]}" if prompt_ids is not None else ""
        raise ParameterError(f"The metric raised{where}: {type(exc).__name__}: {exc}") from exc
