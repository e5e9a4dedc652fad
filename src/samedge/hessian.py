"""Exact Hessian-vector products and the top of the Hessian spectrum.

A *loss closure* maps a parameter dict to a scalar (it closes over the model, its buffers and
the batch). ``HessianOperator`` turns it into an exact HVP ``v -> H v`` on flat vectors, by
double backward through a retained gradient graph or by forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad``). ``lanczos`` (full reorthogonalization) and
``power_iteration`` find the top eigenpairs; ``sharpness`` is the measurement the experiments
record: lambda_max, lambda_min, the operator norm max|lambda| and the top eigenvector.

BatchNorm: the operator differentiates the closure as written. A module in train mode uses
batch statistics, so the Hessian is that of the train-mode loss (statistics differentiated
through) and every HVP call also updates the running-statistics buffers as a side effect;
put such models in ``eval()`` mode (running statistics, a per-example loss) before measuring.
LayerNorm has no running state and needs nothing special.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Literal, Optional, Protocol, Sequence

import torch
from torch.func import grad as func_grad
from torch.func import jvp

from .kernels import check_kernels, kernel_mode
from .vectors import Params, flatten, unflatten

LossFn = Callable[[Params], torch.Tensor]
# The relative residual at which Lanczos stops, unless a caller asks for another: the default of
# every solver here, of ``RunConfig.lanczos_tol`` and of ``EdgeMonitor(tol=)``.
DEFAULT_TOL = 1e-3
Matvec = Callable[[torch.Tensor], torch.Tensor]
HVPMethod = Literal["double_backward", "forward_over_reverse"]


class Operator(Protocol):
    """What the eigensolvers' callers read from an operator: ``HessianOperator`` and its kin."""

    size: int
    dtype: torch.dtype
    device: torch.device

    def __call__(self, vec: torch.Tensor) -> torch.Tensor: ...


__all__ = [
    "DEFAULT_TOL",
    "HessianOperator",
    "FiniteDifferenceHessianOperator",
    "PreconditionedOperator",
    "adam_preconditioner",
    "EigenResult",
    "Sharpness",
    "lanczos",
    "ritz",
    "power_iteration",
    "sharpness",
    "dense_hessian",
    "cold_log_bound",
    "warm_log_bound",
    "miss_bound",
]


class HessianOperator:
    """Exact HVPs of a loss closure (or a size-weighted sum of closures) at fixed parameters.

    ``method``: ``"double_backward"`` (the default) builds the gradient graph once and reuses it
    for every HVP of a Lanczos run; ``"forward_over_reverse"`` (``torch.func.jvp`` of
    ``torch.func.grad``) rebuilds it at every call. Double backward is the cheaper for every
    architecture measured (``benchmarks/bench.py --sections 1b``, one CPU thread, HVP in gradients):
    the CIFAR-10 CNN with LayerNorm 3.5 against 6.3, a BatchNorm CNN in eval mode 2.7 against
    5.0, the Transformer 2.6 against 4.7 (and the MNIST MLP, section 1). Forward-over-reverse
    cannot run a BatchNorm layer in train mode at all (its running-statistics update is an
    in-place write that ``torch.func`` refuses). So there is no ``method="auto"``: it would
    choose double backward for every model family; forward-over-reverse remains for closures
    that cannot retain a graph.
    """

    def __init__(
        self,
        loss_fns: LossFn | Sequence[LossFn],
        params: Params,
        method: HVPMethod = "double_backward",
        weights: Optional[Sequence[float]] = None,
        kernels: str = "default",
    ):
        if method not in ("double_backward", "forward_over_reverse"):
            raise ValueError(f"method must be 'double_backward' or 'forward_over_reverse', got {method!r}")
        self.single = callable(loss_fns)
        self.loss_fns: List[LossFn] = [loss_fns] if callable(loss_fns) else list(loss_fns)
        if not self.loss_fns:
            raise ValueError("loss_fns is empty: give at least one loss closure")
        if weights is None:
            weights = [1.0 / len(self.loss_fns)] * len(self.loss_fns)
        if len(weights) != len(self.loss_fns):
            raise ValueError(f"{len(weights)} weights for {len(self.loss_fns)} loss closures")
        self.weights = [float(w) for w in weights]
        self.params = {k: v.detach() for k, v in params.items()}
        self.method = method
        self.size = sum(v.numel() for v in self.params.values())
        first = next(iter(self.params.values()))
        self.dtype, self.device = first.dtype, first.device
        self.calls = 0
        self._graph: Optional[tuple] = None  # (leaf params, grads with graph), kept for a single closure
        # Forward-mode AD does not go through oneDNN's autograd.Function: forward-over-reverse
        # always runs PyTorch's kernels (and records that it did).
        self.kernels = check_kernels(kernels) if method == "double_backward" else "default"

    @classmethod
    def from_batches(
        cls,
        make_loss: Callable[[object], LossFn],
        batches: Sequence,
        params: Params,
        method: HVPMethod = "double_backward",
    ) -> "HessianOperator":
        """HVP of the dataset loss from batches, each weighted by its size (len of its first tensor)."""
        sizes = [len(b[0]) for b in batches]
        total = float(sum(sizes))
        return cls([make_loss(b) for b in batches], params, method, [s / total for s in sizes])

    def _double_backward(self, fn: LossFn, v: Params, retain: bool) -> Params:
        if retain and self._graph is not None:
            leaves, grads = self._graph
        else:
            leaves = {k: p.detach().requires_grad_(True) for k, p in self.params.items()}
            with torch.enable_grad():
                with kernel_mode(self.kernels, twice=True):
                    loss = fn(leaves)
                grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
            if retain:
                self._graph = (leaves, grads)
        # A parameter that is unused or enters the loss linearly has a gradient without a graph
        # (or none): its Hessian row is zero, so it is left out of the second backward.
        pairs = [(g, u) for g, u in zip(grads, v.values()) if g is not None and g.requires_grad]
        hv = (
            torch.autograd.grad(
                [g for g, _ in pairs],
                list(leaves.values()),
                grad_outputs=[u for _, u in pairs],
                retain_graph=retain,
                allow_unused=True,
            )
            if pairs
            else [None] * len(leaves)
        )
        return {k: torch.zeros_like(p) if h is None else h for (k, p), h in zip(leaves.items(), hv)}

    def loss_and_gradient(self) -> tuple:
        """(loss, gradient dict) at the operator's parameters, from the gradient graph the HVPs
        reuse: a caller that needs g anyway (a SAM step at a measured point) saves a gradient."""
        if not (self.single and self.method == "double_backward"):
            raise ValueError("loss_and_gradient needs a single loss closure and method='double_backward'")
        leaves = {k: p.detach().requires_grad_(True) for k, p in self.params.items()}
        with torch.enable_grad():
            with kernel_mode(self.kernels, twice=True):
                loss = self.loss_fns[0](leaves)
            grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
        self._graph = (leaves, grads)
        zero = lambda g, p: torch.zeros_like(p) if g is None else g.detach()
        return loss.detach(), {k: zero(g, p) for (k, p), g in zip(leaves.items(), grads)}

    def hvp(self, v: Params) -> Params:
        """Exact Hessian-vector product on parameter dicts."""
        self.calls += 1
        total: Optional[Params] = None
        for fn, w in zip(self.loss_fns, self.weights):
            if self.method == "double_backward":
                hv = self._double_backward(fn, v, retain=self.single)
            else:
                hv = jvp(func_grad(fn), (self.params,), (v,))[1]
            hv = {k: t.detach() if w == 1.0 else w * t.detach() for k, t in hv.items()}
            total = hv if total is None else {k: total[k] + hv[k] for k in total}
        return total  # type: ignore[return-value]

    def __call__(self, vec: torch.Tensor) -> torch.Tensor:
        """Exact Hessian-vector product on flat vectors."""
        return flatten(self.hvp(unflatten(vec.to(self.dtype), self.params)))


class FiniteDifferenceHessianOperator:
    """The authors' approximate HVP: (grad L(w + eps v) - grad L(w - eps v)) / (2 eps), v of unit norm."""

    def __init__(self, loss_fn: LossFn, params: Params, eps: float = 1e-3):
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.params = {k: v.detach() for k, v in params.items()}
        self.grad = func_grad(loss_fn)
        self.eps = eps
        self.size = sum(v.numel() for v in self.params.values())
        first = next(iter(self.params.values()))
        self.dtype, self.device = first.dtype, first.device
        self.calls = 0

    def __call__(self, vec: torch.Tensor) -> torch.Tensor:
        """Central-difference approximation of H vec (two gradients)."""
        self.calls += 1
        n = torch.linalg.vector_norm(vec)
        if n == 0:
            return torch.zeros_like(vec)
        v = unflatten(vec.to(self.dtype) / n, self.params)
        plus = self.grad({k: self.params[k] + self.eps * v[k] for k in v})
        minus = self.grad({k: self.params[k] - self.eps * v[k] for k in v})
        return n * (flatten(plus) - flatten(minus)) / (2 * self.eps)


class PreconditionedOperator:
    """The symmetric operator P^-1/2 (H + shift I) P^-1/2 of an HVP operator and a positive diagonal P.

    Its eigenvalues are those of P^-1 (H + shift I) (similar matrices), the sharpness the edges of
    Adam, AdamW and RMSprop are stated for (``samedge.edge.adam_edge``); an eigenvector y of it
    gives the eigenvector P^-1/2 y of P^-1 H. ``diag`` is the flat diagonal or a parameter dict
    (e.g. ``adam_preconditioner``), read in the key order of ``op.params`` when ``op`` has them.
    ``shift``: Adam's or RMSprop's coupled weight decay, which the preconditioner also divides."""

    def __init__(self, op: Operator, diag: torch.Tensor | Params, shift: float = 0.0):
        self.op = op
        self.size, self.dtype, self.device = op.size, op.dtype, op.device
        if isinstance(diag, torch.Tensor):
            flat = diag.reshape(-1)
        else:
            like = getattr(op, "params", None)
            if like is not None:
                if set(diag) != set(like):
                    raise ValueError(f"diag has keys {sorted(diag)}, the operator's parameters are {sorted(like)}")
                bad = [k for k in like if diag[k].shape != like[k].shape]
                if bad:
                    raise ValueError(f"diag's shapes differ from the parameters' for {bad}")
                diag = {k: diag[k] for k in like}
            flat = flatten(diag)
        if flat.numel() != self.size:
            raise ValueError(f"diag has {flat.numel()} entries, the operator acts on {self.size}")
        flat = flat.to(device=self.device, dtype=torch.float64)
        if not bool(torch.all(torch.isfinite(flat) & (flat > 0))):
            raise ValueError("diag must be finite and > 0 (Adam's P = sqrt(v_hat) + eps is, for eps > 0)")
        if not math.isfinite(shift):
            raise ValueError(f"shift must be finite, got {shift!r}")
        self.shift = float(shift)
        self.inv_sqrt = flat.rsqrt().to(self.dtype)
        self.calls = 0

    def __call__(self, vec: torch.Tensor) -> torch.Tensor:
        """P^-1/2 (H + shift I) P^-1/2 vec on flat vectors (one HVP)."""
        self.calls += 1
        u = self.inv_sqrt * vec.to(self.dtype)
        hu = self.op(u)
        if self.shift != 0.0:
            hu = hu + self.shift * u
        return self.inv_sqrt * hu


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Params) -> Params:
    """The diagonal P that ``optimizer``'s next step divides by, per parameter of ``params``.

    ``torch.optim.Adam`` / ``AdamW``: P = sqrt(exp_avg_sq / (1 - beta2^step)) + eps, as torch
    computes its denominator; ``torch.optim.RMSprop``: P = sqrt(square_avg) + eps (no bias
    correction; centered: sqrt(square_avg - grad_avg^2) + eps). A ``samedge.SAM`` is read through
    its base optimizer. ``params`` maps names to the optimizer's own parameter tensors."""
    opt = getattr(optimizer, "base_optimizer", optimizer)
    if isinstance(opt, torch.optim.Adam):  # AdamW subclasses Adam
        kind, key = "adam", "exp_avg_sq"
    elif isinstance(opt, torch.optim.RMSprop):
        kind, key = "rmsprop", "square_avg"
    else:
        raise ValueError(
            f"adam_preconditioner reads torch.optim.Adam, AdamW or RMSprop state, got {type(opt).__name__}"
        )
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    if not any(opt.state.get(p) for p in params.values()):
        raise ValueError(
            f"{type(opt).__name__} has no state for these parameters: take a step first (P is read from it)"
        )
    out = {}
    for name, p in params.items():
        group = group_of.get(id(p))
        if group is None:
            raise ValueError(f"parameter {name!r} is not one of the optimizer's parameters")
        state = opt.state.get(p, {})
        if key not in state:
            raise ValueError(
                f"parameter {name!r} has no {key!r} in the optimizer state (no gradient reached it): "
                "leave it out of params"
            )
        with torch.no_grad():
            if kind == "adam":
                if group.get("amsgrad", False):
                    raise ValueError(
                        "amsgrad=True divides by sqrt(max_exp_avg_sq / (1 - beta2^step)) + eps, the running "
                        "maximum, not exp_avg_sq; reading that preconditioner is not implemented"
                    )
                step = float(state["step"])
                bias2 = 1 - group["betas"][1] ** step
                denom = state[key].sqrt() / math.sqrt(bias2) + group["eps"]
            else:
                avg = state[key]
                if group.get("centered", False):
                    avg = avg - state["grad_avg"] ** 2
                denom = avg.sqrt() + group["eps"]
        out[name] = denom.detach().clone()
    return out


@dataclass
class EigenResult:
    """Eigenpairs found by an iterative method, with its cost and convergence."""

    eigenvalues: torch.Tensor  # (k,), in the order requested (descending for "LA", by |.| for "LM")
    eigenvectors: torch.Tensor  # (k, n), unit norm, flat
    num_hvps: int
    # The residual test held (every requested pair within tol, relative); with ``certify`` also the
    # miss bound. It does not by itself say that no larger eigenvalue was missed: see ``sharpness``.
    converged: bool
    residuals: torch.Tensor  # (k,) ||H x - theta x|| for each returned pair
    ritz_range: tuple  # (smallest, largest) Ritz value of the final Krylov space (Lanczos)
    history: list = field(default_factory=list)  # the leading estimate after each HVP (for cost/accuracy studies)
    # Lanczos only: (alphas, betas) of the tridiagonal, betas[j] the norm of the (j+1)-th residual
    # vector, so T_j's Ritz residuals are betas[j-1] |s_j|: stopping rules can be replayed offline.
    tridiagonal: tuple = ()


def _start_vector(n: int, v0: Optional[torch.Tensor], dtype, device, seed: int) -> torch.Tensor:
    if v0 is not None:
        v = v0.reshape(-1).to(dtype=dtype, device=device).clone()
        if v.numel() != n:
            raise ValueError(f"v0 has {v.numel()} entries, the operator acts on {n}")
        nv = torch.linalg.vector_norm(v)
        if nv > 0 and torch.isfinite(nv):
            return v / nv
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # Drawn in the working precision when it is float32 (float64 draws take 6x longer), on the
    # CPU generator whatever the device, so a seed gives the same start everywhere.
    draw = torch.float32 if dtype == torch.float32 else torch.float64
    v = torch.randn(n, generator=gen, dtype=draw).to(dtype=dtype, device=device)
    return v / torch.linalg.vector_norm(v)


def _select(theta: torch.Tensor, k: int, which: str) -> torch.Tensor:
    if which == "LA":
        return torch.argsort(theta, descending=True)[:k]
    if which == "SA":
        return torch.argsort(theta)[:k]
    if which == "LM":
        return torch.argsort(theta.abs(), descending=True)[:k]
    if which == "BE":  # both ends: the largest and the smallest
        return torch.stack([torch.argmax(theta), torch.argmin(theta)])
    raise ValueError(f"which must be 'LA', 'SA', 'LM' or 'BE', got {which!r}")


def _tridiagonal(alphas: torch.Tensor, off: Optional[torch.Tensor]) -> torch.Tensor:
    T = torch.diag(alphas)
    return T if off is None or len(off) == 0 else T + torch.diag(off, 1) + torch.diag(off, -1)


def ritz(tridiagonal: tuple, j: int) -> tuple:
    """(Ritz values largest-|.| first, their residual norms) after the first j steps of a Lanczos
    run, from its ``EigenResult.tridiagonal``: a stopping rule replayed offline."""
    alphas, betas = tridiagonal
    theta, S = torch.linalg.eigh(_tridiagonal(alphas[:j], betas[: j - 1]))
    order = torch.argsort(theta.abs(), descending=True)
    return theta[order], (betas[j - 1] * S[-1, order]).abs()


def miss_bound(theta: torch.Tensor, log_betas: float, gap: float) -> float:
    """log of the largest component in the start vector q_1 that an eigenvector u of H with
    |eigenvalue| >= (1 + gap) max |theta| can have, after j Lanczos steps with Ritz values ``theta``
    and log(beta_1 ... beta_j) = ``log_betas``.

    q_{j+1} beta_1 ... beta_j = chi_j(H) q_1 with chi_j the monic polynomial whose roots are the
    Ritz values, so |<u, q_1>| |chi_j(lambda)| <= beta_1 ... beta_j; beyond the Ritz values
    |chi_j| grows monotonically, so |chi_j(lambda)| >= min |chi_j(+-(1 + gap) max |theta|)|."""
    t = theta.double()
    alpha = (1.0 + gap) * float(t.abs().max())
    log_chi = min(float(torch.log(alpha - t).sum()), float(torch.log(alpha + t).sum()))
    return log_betas - log_chi


def lanczos(
    matvec: Matvec,
    size: int,
    k: int = 1,
    which: str = "LA",
    tol: float = DEFAULT_TOL,
    max_iter: int = 100,
    v0: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    seed: int = 0,
    callback: Optional[Callable[[int, float], bool]] = None,
    min_iter: int = 1,
    certify: Optional[tuple] = None,
) -> EigenResult:
    """Top-k eigenpairs of a symmetric operator by Lanczos with full reorthogonalization.

    Converged when every requested Ritz pair has residual ``|beta_m s_mi| <= tol * scale`` with
    scale = |theta_i| (or max |theta| for ``which="BE"``, where the smallest end matters only
    relative to the operator norm). ``v0`` warm-starts (e.g. the previous top eigenvector);
    ``min_iter`` is the smallest Krylov dimension at which convergence may be declared.
    ``certify = (gap, log_bound)`` also requires ``miss_bound(theta, log(beta_1 ... beta_m), gap)
    <= log_bound``: no eigenvector whose |eigenvalue| exceeds (1 + gap) max |theta| can then have
    a component above exp(log_bound) in the start vector.
    """
    if k < 1 or (which == "BE" and k != 2):
        raise ValueError(f"k must be >= 1 (and 2 for which='BE'), got {k}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    max_iter = min(max_iter, size)
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if min_iter < 1:
        raise ValueError(f"min_iter must be >= 1, got {min_iter}")
    min_iter = min(min_iter, max_iter)
    q = _start_vector(size, v0, dtype, device, seed)
    # The basis grows by doubling; 64 rows cover a typical run without a copy (rows not yet
    # written cost no memory).
    Q = torch.empty(min(max_iter, 64), size, dtype=dtype, device=device)
    alphas: List[torch.Tensor] = []
    betas: List = []  # tensors (beta starts as None, appended only once set)
    converged, beta, history = False, None, []
    log_betas = 0.0  # log of beta_1 ... beta_j: ||chi_j(H) q_1|| for the Lanczos polynomial chi_j
    for j in range(max_iter):
        if j == Q.shape[0]:
            Q = torch.cat([Q, torch.empty(min(Q.shape[0], max_iter - j), size, dtype=dtype, device=device)])
        Q[j] = q
        w = matvec(q).to(dtype)
        # The three-term recurrence, then one classical Gram-Schmidt pass against the whole
        # basis: together the "twice is enough" pair, the recurrence as the first pass (it removes
        # all but round-off of w's components on the basis) and the full pass the second. The
        # full pass is memory-bound: it reads Q twice, as (Q w) Q so that both products read it
        # row-major; a second full pass instead of the recurrence would read it twice more.
        alpha = torch.dot(q, w)
        w = w - alpha * q
        if j > 0:
            w = w - betas[-1] * Q[j - 1]
        basis = Q[: j + 1]
        c = basis @ w
        w = w - c @ basis
        alpha = alpha + c[j]
        beta = torch.linalg.vector_norm(w)
        if not (torch.isfinite(alpha) and torch.isfinite(beta)):
            # A non-finite HVP (a diverged run): report NaN, unconverged, rather than fail in eigh.
            nan = torch.full((1 if which != "BE" else 2,), float("nan"), dtype=dtype, device=device)
            return EigenResult(
                nan, q.reshape(1, -1).repeat(len(nan), 1), j + 1, False, nan.double(), (float("nan"), float("nan"))
            )
        alphas.append(alpha)
        theta, S = torch.linalg.eigh(
            _tridiagonal(torch.stack(alphas).double(), torch.stack(betas).double() if betas else None)
        )
        idx = _select(theta, min(k, j + 1) if which != "BE" else 2, which)
        res = (beta.double() * S[-1, idx]).abs()
        history.append(float(theta[idx[0]]))
        if callback is not None and callback(j + 1, history[-1]):
            break
        scale = theta.abs().max() if which == "BE" else theta[idx].abs()
        breakdown = bool(beta <= 1e-10 * max(theta.abs().max().item(), 1e-30))
        enough = j + 1 >= max(k if which != "BE" else 2, min_iter)
        log_betas += math.log(beta.item()) if beta > 0 else -math.inf
        accurate = bool(torch.all(res <= tol * scale))
        if certify is not None and accurate and not breakdown:
            accurate = miss_bound(theta, log_betas, certify[0]) <= certify[1]
        if enough and (breakdown or accurate):
            converged = True
            break
        if j + 1 < max_iter:
            if breakdown:
                # Invariant subspace (e.g. v0 an exact eigenvector) before enough Ritz pairs exist:
                # continue from a random vector orthogonal to it, as ARPACK does (T block-diagonal).
                w = _start_vector(size, None, dtype, device, seed + j + 1)
                for _ in range(2):
                    w = w - (Q[: j + 1] @ w) @ Q[: j + 1]
                beta = torch.zeros_like(beta)
                q = w / torch.linalg.vector_norm(w)
            else:
                q = w / beta
            betas.append(beta)
    m = len(alphas)
    vecs = S[:, idx].T.to(dtype) @ Q[:m]
    vecs = vecs / torch.linalg.vector_norm(vecs, dim=1, keepdim=True)
    tri = (torch.stack(alphas).double(), torch.stack(betas[: m - 1] + [beta]).double())
    return EigenResult(
        theta[idx].to(dtype), vecs, m, converged, res, (theta.min().item(), theta.max().item()), history, tri
    )


def power_iteration(
    matvec: Matvec,
    size: int,
    tol: float = DEFAULT_TOL,
    max_iter: int = 1000,
    v0: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    seed: int = 0,
    callback: Optional[Callable[[int, float], bool]] = None,
) -> EigenResult:
    """The eigenvalue of largest magnitude by power iteration (the paper's method, in spirit).

    The estimate is the Rayleigh quotient v^T H v, which keeps the sign; it stops when the
    estimate changes by at most ``tol`` relative. (The authors' code stops on the change of
    ||Hv|| and reports ||Hv||, losing the sign; the estimates agree in magnitude at convergence.)
    ``callback(num_hvps, estimate)`` after every HVP; returning True stops there.
    """
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    v = _start_vector(size, v0, dtype, device, seed)
    hv = matvec(v).to(dtype)
    lam = torch.dot(v, hv)
    converged, n, history = False, 1, [float(lam)]
    while n < max_iter:
        nv = torch.linalg.vector_norm(hv)
        if nv == 0:
            converged = True
            break
        v = hv / nv
        hv = matvec(v).to(dtype)
        n += 1
        new = torch.dot(v, hv)
        history.append(float(new))
        done = bool((new - lam).abs() <= tol * new.abs())
        lam = new
        if done:
            converged = True
            break
        if callback is not None and callback(n, history[-1]):
            break
    res = torch.linalg.vector_norm(hv - lam * v).double().reshape(1)
    return EigenResult(lam.reshape(1), v.reshape(1, -1), n, converged, res, (float("nan"), float("nan")), history)


@dataclass
class Sharpness:
    """The curvature summary the experiments record at one point."""

    op_norm: float  # ||H||_op = max |lambda|, converged to tol
    lambda_max: float  # largest Ritz value (equals op_norm when the top of the spectrum dominates)
    lambda_min: float  # smallest Ritz value: an upper bound on the true lambda_min, not converged
    eigenvector: torch.Tensor  # flat unit eigenvector of the largest-|lambda| Ritz pair, for warm starts
    num_hvps: int
    # True: the residual is <= tol and, when ``certificate`` = (gap, risk) is set, no eigenvalue with
    # |lambda| >= (1 + gap) op_norm is missed with probability > risk over the start's random draw.
    converged: bool
    certificate: Optional[tuple] = None


# The certificate of every ``sharpness`` run, cold or warm (``cold_log_bound``, ``warm_log_bound``,
# ``miss_bound``); for a warm start also the guard (see ``guarded_start`` and ``sharpness``): the start
# vector is the previous eigenvector plus a random vector of relative weight WARM_MIX, and a
# warm-started run may stop only once the Lanczos polynomial shows (``miss_bound``) that an
# eigenvalue whose magnitude exceeds the result by a factor 1 + WARM_GAP would have needed a
# component in the start vector that the random share gives it with probability <= WARM_RISK,
# whatever the previous eigenvector was. WARM_MIN_ITER is a floor on the HVPs of a warm run
# (1: the bound, not a fixed count, decides; the guard before it was a floor of 16).
WARM_MIX = 1.0
WARM_GAP = 0.07
WARM_RISK = 1e-2
WARM_MIN_ITER = 1


def guarded_start(
    v0: torch.Tensor, size: int, dtype, device, seed: int, mix: float = WARM_MIX
) -> Optional[torch.Tensor]:
    """Start vector v0/|v0| + mix * r, r a seeded random unit vector orthogonal to v0 (None
    when v0 is zero or non-finite, i.e. a cold start).

    A start vector at (or within round-off of) a lower eigenvector converges to that
    eigenvalue after one HVP and passes the residual test; the random share gives every
    eigenvector, the top one included, a component of order 1/sqrt(n) that no choice of v0
    can cancel (``warm_log_bound``)."""
    v = v0.reshape(-1).to(dtype=dtype, device=device)
    if v.numel() != size:
        raise ValueError(f"v0 has {v.numel()} entries, the operator acts on {size}")
    nv = torch.linalg.vector_norm(v)
    if not (nv > 0 and torch.isfinite(nv)):
        return None
    v = v / nv
    r = _start_vector(size, None, dtype, device, seed)
    r = r - torch.dot(r, v) * v
    return v + mix * r / torch.linalg.vector_norm(r)


def warm_log_bound(size: int, mix: float, risk: float) -> float:
    """log c such that, for any fixed unit vector u, the normalized ``guarded_start`` vector q_1
    has |<u, q_1>| <= c with probability <= ``risk`` over its random share (0 < mix <= 1).

    q_1 = (d + mix r) / sqrt(1 + mix^2) with r uniform on the unit sphere orthogonal to d; write
    u = a d + b e, e a unit vector orthogonal to d. If b >= 1/2: <r, e> has density at most
    sqrt((n - 1) / (2 pi)), so P(|a + mix b <r, e>| <= c sqrt(1 + mix^2)) <= 4 c sqrt(1 + mix^2)
    sqrt((n - 1) / (2 pi)) / mix. If b < 1/2: |a| > sqrt(3)/2 and |mix b <r, e>| < 1/2, so for
    c <= 0.25 the event is impossible."""
    if not 0 < mix <= 1:
        raise ValueError(f"warm_mix must be in (0, 1] for a guarded warm start, got {mix!r}")
    if not 0 < risk < 1:
        raise ValueError(f"warm_risk must be in (0, 1), got {risk!r}")
    k = 4.0 * math.sqrt(1.0 + mix**2) / mix * math.sqrt(max(size - 1, 1) / (2.0 * math.pi))
    return min(math.log(risk / k), math.log(0.25))


def cold_log_bound(size: int, risk: float) -> float:
    """log c such that, for any fixed unit vector u, a uniformly random unit start vector q_1 (the
    cold start: a normalized Gaussian draw) has |<u, q_1>| <= c with probability <= ``risk``.

    <u, q_1> has density Gamma(n/2) / (sqrt(pi) Gamma((n-1)/2)) (1 - t^2)^((n-3)/2), at most
    sqrt((n - 1) / (2 pi)) on |t| <= 1/4 (Wendel: Gamma(x + 1/2) / Gamma(x) <= sqrt(x); for n = 2
    the density there is at most 1 / (pi sqrt(15/16)) < sqrt(1 / (2 pi))), so
    P(|<u, q_1>| <= c) <= 2 c sqrt((n - 1) / (2 pi)) for c <= 1/4."""
    if not 0 < risk < 1:
        raise ValueError(f"risk must be in (0, 1), got {risk!r}")
    k = 2.0 * math.sqrt(max(size - 1, 1) / (2.0 * math.pi))
    return min(math.log(risk / k), math.log(0.25))


def sharpness(
    op: Operator,
    v0: Optional[torch.Tensor] = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = 100,
    seed: int = 0,
    warm_mix: float = WARM_MIX,
    warm_min_iter: int = WARM_MIN_ITER,
    warm_gap: Optional[float] = WARM_GAP,
    warm_risk: float = WARM_RISK,
) -> Sharpness:
    """||H||_op (and the Ritz range) of ``op`` (a HessianOperator) by one Lanczos run.

    Lanczos stops once the largest-magnitude Ritz pair has relative residual <= ``tol`` and
    ``miss_bound`` shows that an eigenvalue with |lambda| >= (1 + warm_gap) |theta| is missed
    with probability <= ``warm_risk`` over the start's random draw: whatever ``tol``, a result
    with ``converged=True`` carries that certificate (``Sharpness.certificate`` = (gap, risk)).
    A cold start is a uniformly random vector (``cold_log_bound``); a warm start ``v0`` (the
    previous eigenvector) is guarded: the run starts from ``guarded_start(v0)``
    (``warm_log_bound``), and not before ``warm_min_iter`` HVPs. ``warm_gap = None``: the
    residual test only (``certificate`` None); ``warm_mix = 0``: the plain warm start, residual
    test only (its start has no random share to certify with).
    """
    start = guarded_start(v0, op.size, op.dtype, op.device, seed, warm_mix) if v0 is not None else None
    certify = None
    if warm_gap is not None:
        if start is None:
            certify = (warm_gap, cold_log_bound(op.size, warm_risk))
        elif warm_mix > 0:
            certify = (warm_gap, warm_log_bound(op.size, warm_mix, warm_risk))
    r = lanczos(
        op,
        op.size,
        k=1,
        which="LM",
        tol=tol,
        max_iter=max_iter,
        v0=start,
        dtype=op.dtype,
        device=op.device,
        seed=seed,
        min_iter=warm_min_iter if start is not None else 1,
        certify=certify,
    )
    lo, hi = r.ritz_range
    cert = None if certify is None else (float(warm_gap), float(warm_risk))  # type: ignore[arg-type]
    return Sharpness(abs(float(r.eigenvalues[0])), hi, lo, r.eigenvectors[0], r.num_hvps, r.converged, cert)


def dense_hessian(loss_fn: LossFn, params: Params) -> torch.Tensor:
    """The full Hessian as an (n, n) matrix (for tests and tiny models only)."""
    keys = list(params)
    flat = flatten({k: params[k].detach() for k in keys})

    def f(x: torch.Tensor) -> torch.Tensor:
        return loss_fn(unflatten(x, params))

    return torch.autograd.functional.hessian(f, flat)
