"""The functional core every learner uses: parameters as name->tensor dicts, a functional
forward, differentiable inner-loop steps (SGD, Adam, optional Meta-SGD learning rates),
Hessian-vector products and conjugate gradient.

Why functional: a meta-learner needs the same network evaluated at many parameter sets (θ and
its adapted φ_1..φ_K) inside one autograd graph. `torch.func.functional_call` does that without
copying the module (unlike learn2learn's clone) or monkey-patching it (unlike higher).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params], torch.Tensor]
LearningRate = float | torch.Tensor | dict[str, torch.Tensor]


def trainable_params(model: nn.Module) -> Params:
    """The model's requires_grad parameters by name (the tensors themselves, not copies)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def detached(params: Params, requires_grad: bool = False) -> Params:
    """Graph-free copies (sharing storage) of `params`, optionally fresh leaves that require grad."""
    return {name: p.detach().requires_grad_(requires_grad) for name, p in params.items()}


def forward(model: nn.Module, params: Params, x: torch.Tensor, buffers: Params | None = None) -> torch.Tensor:
    """`model(x)` with `params` (and optionally `buffers`) substituted; parameters not in `params`
    (frozen ones) and buffers not given are the module's own."""
    return functional_call(model, params if buffers is None else (params, buffers), (x,))


def loss_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Callable, buffers: Params | None = None) -> LossFn:
    """params -> loss(model_params(x), y): the closure the inner loop and the HVPs differentiate."""
    return lambda params: loss(forward(model, params, x, buffers), y)


def grads(loss: torch.Tensor, params: Params, create_graph: bool = False, retain_graph: bool | None = None) -> Params:
    """d loss / d params as a dict; parameters the loss does not reach get zeros."""
    values = tuple(params.values())
    out = torch.autograd.grad(loss, values, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True)
    return {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(params.items(), out)}


def add_grads(parameters: Sequence[torch.Tensor], values: Sequence[torch.Tensor | None], scale: float = 1.0) -> None:
    """Accumulate scale * values into .grad, like loss.backward() does."""
    for p, g in zip(parameters, values):
        if g is None:
            continue
        g = g.detach() * scale if scale != 1.0 else g.detach()
        p.grad = g.clone() if p.grad is None else p.grad.add_(g)


# ------------------------------------------------------------------------- inner-loop steps


def _lr_for(lr: LearningRate, name: str) -> float | torch.Tensor:
    return lr[name] if isinstance(lr, dict) else lr


@dataclass
class AdamState:
    """Functional Adam moments; tensors stay in the graph when the inner loop is second order."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    step: int = 0
    m: Params = field(default_factory=dict)
    v: Params = field(default_factory=dict)


def sgd_direction(g: Params, state: None = None) -> tuple[Params, None]:
    return g, None


def adam_direction(g: Params, state: AdamState) -> tuple[Params, AdamState]:
    """Bias-corrected Adam direction m̂ / (sqrt(v̂) + eps).

    sqrt is taken of v̂ + eps² (not v̂): d sqrt(v)/dv is infinite at v = 0, which would put NaNs
    into second-order meta-gradients for any exactly-zero gradient entry.
    """
    b1, b2 = state.betas
    t = state.step + 1
    m = {n: b1 * state.m[n] + (1 - b1) * gn if state.m else (1 - b1) * gn for n, gn in g.items()}
    v = {n: b2 * state.v[n] + (1 - b2) * gn * gn if state.v else (1 - b2) * gn * gn for n, gn in g.items()}
    c1, c2 = 1 - b1**t, 1 - b2**t
    d = {n: (m[n] / c1) / ((v[n] / c2 + state.eps**2).sqrt() + state.eps) for n in g}
    return d, AdamState(state.betas, state.eps, t, m, v)


DIRECTIONS = {"sgd": sgd_direction, "adam": adam_direction}


def new_state(optimizer: str) -> AdamState | None:
    return AdamState() if optimizer == "adam" else None


def apply_update(params: Params, direction: Params, lr: LearningRate) -> Params:
    """φ - lr ⊙ d, with lr a float, one tensor, or a per-parameter dict (Meta-SGD)."""
    return {n: p - _lr_for(lr, n) * direction[n] for n, p in params.items()}


def inner_step(
    loss_fn: LossFn, params: Params, lr: LearningRate, optimizer: str = "sgd", state: AdamState | None = None,
    second_order: bool = True,
) -> tuple[Params, AdamState | None, torch.Tensor]:
    """One inner-loop step from `params`; returns (new params, optimiser state, detached loss).

    second_order=True keeps the whole step differentiable (create_graph), so a later backward
    sees d(new params)/d(params) = I - lr·H. second_order=False differentiates the loss at a
    detached copy: the update direction is a constant, only `params` itself and lr stay in the
    graph (first-order MAML; also what inference uses, where nothing requires grad).
    """
    if second_order:
        loss = loss_fn(params)
        g = grads(loss, params, create_graph=True)
    else:
        at = detached(params, requires_grad=True)
        with torch.enable_grad():
            loss = loss_fn(at)
            g = grads(loss, at)
    direction, state = DIRECTIONS[optimizer](g, state)
    return apply_update(params, direction, lr), state, loss.detach()


def _checkpointed_step(
    loss_fn: LossFn, params: Params, lr: LearningRate, optimizer: str, state: AdamState | None
) -> tuple[Params, AdamState | None, torch.Tensor]:
    """A second-order inner step under the non-reentrant torch.utils.checkpoint
    (use_reentrant=False): the step runs once with grad enabled, but the tensors its
    double-backward graph would save are dropped and recomputed by re-running the step during the
    outer backward. This variant is the one that allows torch.autograd.grad inside the checkpointed
    function and takes dicts and dataclasses as they are (the reentrant one needs flat tensor
    tuples and runs the forward without grad)."""
    new, state, loss = torch.utils.checkpoint.checkpoint(
        inner_step, loss_fn, params, lr, optimizer, state, True, use_reentrant=False)
    return new, state, loss


def inner_loop(
    loss_fn: LossFn, params: Params, steps: int, lr: LearningRate, optimizer: str = "sgd",
    second_order: bool = True, checkpoint: bool = False, tol: float = 0.0,
) -> tuple[Params, list[float]]:
    """`steps` inner steps from `params`; returns (fast params, loss before each step).

    checkpoint=True (second order only) trades one extra forward+backward per step for not
    storing each step's graph: memory stops growing with the number of steps' activations.
    tol > 0 stops early once the loss changes by less than tol (a cheap convergence test).
    """
    state = new_state(optimizer)
    losses: list[float] = []
    for _ in range(steps):
        if checkpoint and second_order:
            params, state, loss = _checkpointed_step(loss_fn, params, lr, optimizer, state)
        else:
            params, state, loss = inner_step(loss_fn, params, lr, optimizer, state, second_order)
        losses.append(float(loss))
        if tol > 0 and len(losses) > 1 and abs(losses[-2] - losses[-1]) < tol:
            break
    return params, losses


# ------------------------------------------------------------------ second-order machinery


def hvp_double_backward(loss_fn: LossFn, params: Params) -> Callable[[Params], Params]:
    """v -> H v at `params` by double backward. The gradient graph is built once and reused for
    every product (retain_graph), so a CG solve costs one forward+backward plus one
    backward-of-backward per iteration. Measured faster than forward-over-reverse
    (`hvp_jvp`) on the U-Net: see docs/learners.md."""
    at = detached(params, requires_grad=True)
    g = grads(loss_fn(at), at, create_graph=True)
    g_flat = tuple(g.values())
    inputs = tuple(at.values())

    def hvp(v: Params) -> Params:
        out = torch.autograd.grad(g_flat, inputs, grad_outputs=tuple(v[n] for n in at), retain_graph=True,
                                  allow_unused=True)
        return {n: torch.zeros_like(p) if h is None else h.detach() for (n, p), h in zip(at.items(), out)}

    return hvp


def hvp_jvp(loss_fn: LossFn, params: Params) -> Callable[[Params], Params]:
    """v -> H v by forward-over-reverse (torch.func.jvp of torch.func.grad): no retained graph,
    but every product re-runs the forward and backward."""
    at = detached(params)
    grad_fn = torch.func.grad(loss_fn)

    def hvp(v: Params) -> Params:
        return {n: h.detach() for n, h in torch.func.jvp(grad_fn, (at,), (v,))[1].items()}

    return hvp


HVP_METHODS = {"double_backward": hvp_double_backward, "jvp": hvp_jvp}


def dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[n] * b[n]).sum() for n in a)


@dataclass
class CGResult:
    """What a conjugate-gradient solve found: `x`, the relative residual ‖b − A x‖ / ‖b‖ (the
    recursive one CG tracks, not recomputed), the iterations and products A·v it spent, and
    whether it stopped on a direction with pᵀAp ≤ 0 (A is not positive definite there: `x` is the
    iterate before that direction, or b itself when it was the first one from x = 0, the
    truncated-Newton convention; the caller should say so)."""

    x: Params
    residual: float
    steps: int
    matvecs: int
    negative_curvature: bool = False


def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, steps: int, tol: float = 0.0,
                       x0: Params | None = None) -> CGResult:
    """Solve A x = b for symmetric positive-definite A by at most `steps` CG iterations, from `x0`
    (a warm start, e.g. the previous solve's x; one extra product for its residual) or from 0.
    Stops early when the relative residual is below `tol` or when pᵀAp ≤ 0."""
    if x0 is None:
        x = {n: torch.zeros_like(t) for n, t in b.items()}
        r = {n: t.clone() for n, t in b.items()}
        matvecs = 0
    else:
        x = {n: x0[n].detach().clone() for n in b}
        ax = matvec(x)
        r = {n: b[n] - ax[n] for n in b}
        matvecs = 1
    d = {n: t.clone() for n, t in r.items()}
    b_norm = dot(b, b).sqrt().clamp_min(1e-30)
    rr = dot(r, r)
    done, negative = 0, False
    while done < steps:
        if rr == 0 or (tol > 0 and rr.sqrt() / b_norm < tol):
            break
        ad = matvec(d)
        matvecs += 1
        curvature = dot(d, ad)
        if curvature <= 0:
            negative = True
            if done == 0 and x0 is None:  # truncated-Newton convention: A taken as I, x = b
                x = {n: t.clone() for n, t in b.items()}
                r = {n: b[n] - ad[n] for n in b}
                rr = dot(r, r)
            break
        alpha = rr / curvature
        x = {n: x[n] + alpha * d[n] for n in x}
        r = {n: r[n] - alpha * ad[n] for n in r}
        rr_new = dot(r, r)
        d = {n: r[n] + (rr_new / rr) * d[n] for n in d}
        rr = rr_new
        done += 1
    return CGResult(x, float(rr.sqrt() / b_norm), done, matvecs, negative)


# ------------------------------------------------------------------------------- Meta-SGD


def lr_key(name: str) -> str:
    """ParameterDict keys cannot contain '.', parameter names do."""
    return name.replace(".", "__")


def make_meta_sgd_lrs(params: Params, init: float, per: str = "element") -> nn.ParameterDict:
    """Learned inner learning rates (Meta-SGD, Li et al. 2017): `per="element"` gives one lr per
    weight (a tensor shaped like the parameter, the paper's form), `per="tensor"` one scalar per
    parameter tensor (cheap: ~100 extra meta-parameters for the U-Net)."""
    if per not in ("element", "tensor"):
        from metaseg.errors import MetasegError

        raise MetasegError(f"learner.meta_sgd_per must be 'element' or 'tensor', got {per!r}")
    shape = (lambda p: p.shape) if per == "element" else (lambda p: ())
    return nn.ParameterDict({
        lr_key(n): nn.Parameter(torch.full(shape(p), float(init), dtype=p.dtype, device=p.device))
        for n, p in params.items()
    })


def meta_sgd_lr_dict(lrs: nn.ParameterDict, params: Params) -> dict[str, torch.Tensor]:
    return {n: lrs[lr_key(n)] for n in params}
