"""The functional core every learner uses: parameters as name->tensor dicts, a functional
forward, differentiable inner-loop steps (SGD, Adam, optional Meta-SGD learning rates),
Hessian-vector products and conjugate gradient.

Why functional: a meta-learner needs the same network evaluated at many parameter sets (θ and
its adapted φ_1..φ_K) inside one autograd graph. `torch.func.functional_call` does that without
copying the module (unlike learn2learn's clone) or monkey-patching it (unlike higher).
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

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


def has_tied_tensors(model: nn.Module) -> bool:
    """Whether one parameter or buffer is registered under two names (weight tying)."""
    seen: set[int] = set()
    for _, t in itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)):
        if id(t) in seen:
            return True
        seen.add(id(t))
    return False


def forward(model: nn.Module, params: Params, x: torch.Tensor, buffers: Params | None = None,
            tied: bool | None = None) -> torch.Tensor:
    """`model(x)` with `params` (and optionally `buffers`) substituted; parameters not in `params`
    (frozen ones) and buffers not given are the module's own; a tensor tied under several names is
    substituted under all of them.

    `tied`: `has_tied_tensors(model)`, or None to look it up here. Why a caller passes it: finding
    the ties walks every module (functional_call's tie_weights does it on each call, ~0.7 ms for the
    U-Net, ~1% of a MAML meta-step over its 6 forwards), so code that runs one model many times
    looks once (loss_at) and an untied model skips the search (tie_weights=False: same result)."""
    tied = has_tied_tensors(model) if tied is None else tied
    return functional_call(model, params if buffers is None else (params, buffers), (x,), tie_weights=tied)


def loss_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Callable, buffers: Params | None = None) -> LossFn:
    """params -> loss(model_params(x), y): the closure the inner loop and the HVPs differentiate.

    The logits are taken to float32 before the loss (`full_precision`: a no-op in fp32 and fp64): under bf16 autocast the
    network's last conv returns bf16, and a Dice/BCE sum over 16k pixels per image in bf16 (8-bit
    mantissa) would lose the small differences the inner loop follows. The model's weight ties
    are looked up once, here, not at every call."""
    tied = has_tied_tensors(model)
    return lambda params: loss(full_precision(forward(model, params, x, buffers, tied)), y)


def full_precision(logits: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits (autocast) as float32; float32 and float64 as they are."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


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


# ------------------------------------------------------------------------------- precision

PRECISIONS = ("fp32", "bf16-mixed")


def autocast(precision: str, device: torch.device | str) -> ContextManager:
    """The context a learner's forward passes run under for `precision`.

    "bf16-mixed" is torch.autocast(bfloat16) on the device's type (CPU or CUDA), i.e. Lightning's
    bf16-mixed: autocast casts only the ops on its lower-precision list (conv, matmul, linear) to
    bf16 — so the forward, its backward and the HVPs' double backward run their convs in bf16 —
    while every parameter stays a float32 master copy, and everything a learner does with
    parameters is elementwise and stays float32: the inner-loop update φ − lr·g, Adam moments,
    Meta-SGD rates, the iMAML proximal term, conjugate gradient's vectors, dot products and step
    sizes, and the gradients themselves (the bf16 cast of a weight is differentiated back to its
    float32 leaf). Why: an update lr·g is ~1e-3 of a weight, below bf16's resolution (2^-8
    relative), so bf16 parameters would round most inner steps away, and CG's recurrences
    lose conjugacy at 3 significant digits. The losses are computed on float32 logits (loss_at).
    """
    if precision not in PRECISIONS:
        from metaseg.errors import MetasegError

        raise MetasegError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


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
    """φ - lr ⊙ d, with lr a float, one tensor, or a per-parameter dict (Meta-SGD).

    A float lr is applied as φ + d·(−lr): bit for bit the same values (negation is exact in IEEE
    arithmetic) and the same gradients, but its backward has no negation (SubBackward's), one op
    per parameter tensor and inner step fewer in a second-order meta-step."""
    if isinstance(lr, (int, float)):
        return {n: p + direction[n] * (-lr) for n, p in params.items()}
    return {n: p - _lr_for(lr, n) * direction[n] for n, p in params.items()}


def descend(params: Params, g: Params, lr: LearningRate, optimizer: str, state: AdamState | None
            ) -> tuple[Params, AdamState | None]:
    """One optimiser step from `params` along the gradient `g`: the step shared by the autograd
    inner loop (`inner_step`) and the torch.func one (`func_inner_loop`), which differ only in how
    they take `g`."""
    direction, state = DIRECTIONS[optimizer](g, state)
    return apply_update(params, direction, lr), state


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
    params, state = descend(params, g, lr, optimizer, state)
    return params, state, loss.detach()


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


# ------------------------------------------------------------------ batched tasks (vmap)
#
# A meta-batch of T episodes of equal shapes runs its inner loops together: torch.func.vmap over
# the leading task dimension of stacked (T, B, C, H, W) images, torch.func.grad in place of
# autograd.grad (autograd.grad cannot run under vmap), and the conjugate-gradient solve on
# (T, ...)-batched vectors with a per-task stop mask, so that each task stops exactly where the
# sequential solve would. Why: T small forward passes become one batched (grouped) pass, which
# keeps a wide device busy; on one CPU thread it mostly saves per-op overhead (docs/speed.md).
# Not supported (refused by the learners): BatchNorm in train mode (its in-place running-stat
# update has no batching rule: use the U-Net's default GroupNorm), activation checkpointing, and
# data-dependent early stopping of the inner loop (iMAML inner_tol > 0).


def stack_episodes(episodes: Sequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(support_x, support_y, query_x, query_y), each stacked to (T, B, ...); equal shapes required."""
    shapes = {(tuple(e.support_x.shape), tuple(e.query_x.shape)) for e in episodes}
    if len(shapes) > 1:
        from metaseg.errors import MetasegError

        raise MetasegError(f"learner.vmap_tasks: the episodes of a meta-batch must share their shapes, got {sorted(shapes)}")
    return tuple(torch.stack([getattr(e, k) for e in episodes]) for k in ("support_x", "support_y", "query_x", "query_y"))


def check_vmappable(model: nn.Module) -> None:
    """BatchNorm updating running statistics in place cannot run under vmap: a one-line error."""
    bad = [n for n, m in model.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    if bad:
        from metaseg.errors import MetasegError

        raise MetasegError(f"learner.vmap_tasks: BatchNorm in train mode ({bad[0]}, ...) cannot run under vmap; "
                           "use model.norm 'group' (the default) or vmap_tasks false")


def func_inner_loop(loss_fn: LossFn, params: Params, steps: int, lr: LearningRate, optimizer: str = "sgd",
                    constant_direction: bool = False) -> tuple[Params, torch.Tensor]:
    """`inner_loop`'s steps written with torch.func.grad_and_value instead of torch.autograd.grad,
    so that they run under torch.func.vmap / grad (autograd.grad cannot). Returns (fast params,
    loss before each step as a (steps,) tensor). constant_direction=True (FOMAML) detaches each
    step's direction, so an outer derivative sees only params and lr, as second_order=False does
    in `inner_step`."""
    state, losses = new_state(optimizer), []
    for _ in range(steps):
        g, value = torch.func.grad_and_value(loss_fn)(params)
        if constant_direction:
            g = {n: t.detach() for n, t in g.items()}
        params, state = descend(params, g, lr, optimizer, state)
        losses.append(value)
    return params, torch.stack(losses) if losses else next(iter(params.values())).new_zeros(0)


def vmap_maml_grads(
    model: nn.Module, loss: Callable, theta: Params, lr: LearningRate, episodes: Sequence, steps: int,
    optimizer: str = "sgd", second_order: bool = True, scale: float = 1.0,
) -> tuple[Params, dict[str, torch.Tensor] | None, torch.Tensor, torch.Tensor]:
    """MAML / FOMAML meta-gradient of scale x sum over `episodes` of the query loss after `steps`
    inner steps, all tasks at once. Returns (d/dθ, d/d lr (Meta-SGD dict) or None, query losses (T,),
    support losses (T, steps))."""
    sx, sy, qx, qy = stack_episodes(episodes)
    learn_lr = isinstance(lr, dict)

    def task(theta: Params, lr: LearningRate, sx, sy, qx, qy):
        fast, losses = func_inner_loop(loss_at(model, sx, sy, loss), theta, steps, lr, optimizer,
                                       constant_direction=not second_order)
        q = loss(full_precision(forward(model, fast, qx)), qy)
        return q, (q.detach(), losses.detach())

    def total(theta: Params, lr: LearningRate):
        q, aux = torch.func.vmap(task, in_dims=(None, None, 0, 0, 0, 0))(theta, lr, sx, sy, qx, qy)
        return q.sum() * scale, aux

    argnums = (0, 1) if learn_lr else 0
    lr_in = {n: t.detach() for n, t in lr.items()} if learn_lr else lr
    grads_out, (q, s) = torch.func.grad(total, argnums=argnums, has_aux=True)(detached(theta), lr_in)
    g_theta, g_lr = grads_out if learn_lr else (grads_out, None)
    return g_theta, g_lr, q, s


def vmap_inner_solve(model: nn.Module, objective: Callable[[Params, Params, torch.Tensor, torch.Tensor], torch.Tensor],
                     theta: Params, lr: LearningRate, sx: torch.Tensor, sy: torch.Tensor, steps: int,
                     optimizer: str = "sgd") -> tuple[Params, torch.Tensor]:
    """First-order inner loops of T tasks at once (nothing differentiated through them): the fast
    weights (T-batched) and the objective before each step (T, steps). `objective(params, anchor, x, y)`."""

    def task(theta: Params, sx, sy):
        return func_inner_loop(lambda p: objective(p, theta, sx, sy), theta, steps, lr, optimizer)

    with torch.no_grad():
        return torch.func.vmap(task, in_dims=(None, 0, 0))(detached(theta), sx, sy)


def vmap_hvp(model: nn.Module, loss: Callable, fast: Params, sx: torch.Tensor, sy: torch.Tensor) -> Callable[[Params], Params]:
    """v -> H_t v for every task t at once (T-batched fast weights and v), by forward-over-reverse."""

    def task(fast: Params, v: Params, sx, sy):
        grad_fn = torch.func.grad(loss_at(model, sx, sy, loss))
        return torch.func.jvp(grad_fn, (fast,), (v,))[1]

    batched = torch.func.vmap(task, in_dims=(0, 0, 0, 0))
    return lambda v: {n: h.detach() for n, h in batched(fast, v, sx, sy).items()}


def _per_task(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.view(-1, *([1] * (like.dim() - 1)))


def batched_dot(a: Params, b: Params) -> torch.Tensor:
    """Per-task dot products (T,) of T-batched parameter dicts."""
    return sum((a[n] * b[n]).flatten(1).sum(1) for n in a)


@dataclass
class BatchedCGResult:
    """CGResult per task: x T-batched, residual / steps / matvecs / negative_curvature of shape (T,)."""

    x: Params
    residual: torch.Tensor
    steps: torch.Tensor
    matvecs: torch.Tensor
    negative_curvature: torch.Tensor


def batched_conjugate_gradient(matvec: Callable[[Params], Params], b: Params, steps: int, tol: float = 0.0) -> BatchedCGResult:
    """`conjugate_gradient` (from x = 0) for T systems at once: the same iterates per task; a task
    that would have stopped (residual below tol, or pᵀAp ≤ 0 with the same convention) is frozen
    by a mask while the others go on, and the loop ends when none is active."""
    x = {n: torch.zeros_like(t) for n, t in b.items()}
    r = {n: t.clone() for n, t in b.items()}
    d = {n: t.clone() for n, t in r.items()}
    b_norm = batched_dot(b, b).sqrt().clamp_min(1e-30)
    rr = batched_dot(r, r)
    n_tasks = rr.shape[0]
    active = torch.ones(n_tasks, dtype=torch.bool, device=rr.device)
    negative = torch.zeros_like(active)
    done = torch.zeros(n_tasks, dtype=torch.long, device=rr.device)
    matvecs = torch.zeros_like(done)
    where = lambda mask, a, b_: {n: torch.where(_per_task(mask, a[n]), a[n], b_[n]) for n in a}  # noqa: E731
    for _ in range(steps):
        stop = (rr == 0) | ((rr.sqrt() / b_norm < tol) if tol > 0 else torch.zeros_like(active))
        active = active & ~stop
        if not bool(active.any()):
            break
        ad = matvec(d)
        matvecs = matvecs + active.long()
        curvature = batched_dot(d, ad)
        neg = active & (curvature <= 0)
        first = neg & (done == 0)  # truncated-Newton convention: x = b
        if bool(first.any()):
            x = where(first, b, x)
            r = where(first, {n: b[n] - ad[n] for n in b}, r)
            rr = torch.where(first, batched_dot(r, r), rr)
        negative = negative | neg
        active = active & ~neg
        alpha = torch.where(active, rr / torch.where(active, curvature, torch.ones_like(curvature)), torch.zeros_like(rr))
        x = where(active, {n: x[n] + _per_task(alpha, x[n]) * d[n] for n in x}, x)
        r = where(active, {n: r[n] - _per_task(alpha, r[n]) * ad[n] for n in r}, r)
        rr_new = torch.where(active, batched_dot(r, r), rr)
        beta = torch.where(active, rr_new / torch.where(active, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        d = where(active, {n: r[n] + _per_task(beta, r[n]) * d[n] for n in d}, d)
        rr = rr_new
        done = done + active.long()
    return BatchedCGResult(x, rr.sqrt() / b_norm, done, matvecs, negative)
