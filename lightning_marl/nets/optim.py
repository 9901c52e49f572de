"""Adam and per-group gradient clipping with the least work per training step.

A training step clips each parameter group's gradients to its own norm and steps one Adam per
group. Done the usual way (``clip_grad_norm_`` per group, then ``Adam.step``) that is six or
more operations and a full pass over the gradients per group, plus Adam's per-parameter Python
bookkeeping. Here the norms of every group come from one ``_foreach_norm`` over all gradients,
and each group's clipping coefficient rides into Adam's fused kernel as its ``grad_scale``, which
divides the gradients inside the same pass that updates the parameters (and leaves the clipped
gradients in ``.grad``, as ``clip_grad_norm_`` would).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import optimizer as _torch_optimizer


def fused_kernel_available(params) -> bool:
    """Whether Adam's fused kernel runs for ``params`` (floating point, on CPU or CUDA)."""
    params = list(params)
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


class ClippedAdam(torch.optim.Adam):
    """``torch.optim.Adam`` (same state and state_dict) whose step, with the fused kernel, is two
    calls per parameter group and applies a pending clipping coefficient inside the kernel.

    Set ``grad_scale`` (a 0-d tensor, ``1 / clip coefficient``; ``clip_group_gradients`` returns
    it) before ``step()``: the kernel divides the gradients by it. Anything the fast path does not
    cover (no fused kernel, missing gradients, a first step, AMSGrad, a tensor learning rate)
    falls back to ``Adam.step`` after scaling the gradients explicitly, so results do not depend
    on which path ran.

    Example:
        >>> layer = torch.nn.Linear(3, 1)
        >>> optimizer = ClippedAdam(layer.parameters(), lr=0.1)
        >>> layer(torch.ones(2, 3)).sum().backward()
        >>> norms, scales = clip_group_gradients([list(layer.parameters())], max_norm=1.0)
        >>> optimizer.grad_scale = scales[0]
        >>> optimizer.step()
        >>> round(float(torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()), 4)
        1.0
    """

    def __init__(self, params, lr: float = 1e-3, **kwargs):
        params = list(params)
        fused = fused_kernel_available(p["params"] if isinstance(p, dict) else p for p in params)
        kwargs.setdefault("fused", True if fused else None)
        kwargs.setdefault("foreach", None if fused else True)
        super().__init__(params, lr=lr, **kwargs)
        self.grad_scale: Tensor | None = None
        self._state_lists: list | None = None

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._state_lists = None

    def add_param_group(self, param_group) -> None:
        super().add_param_group(param_group)
        self._state_lists = None

    def _fast_lists(self):
        """Per group: (group, params, exp_avgs, exp_avg_sqs, steps, all steps), once every state exists.

        The per-parameter step counters become views of one tensor per group, so that counting a
        step is one ``add_`` instead of one per parameter (on the CPU ``_foreach_add_`` of a scalar
        runs an ``add_`` and a scalar copy per tensor: ~80 µs per OMIGA step)."""
        if self._state_lists is None:
            lists = []
            for group in self.param_groups:
                params = group["params"]
                if not (group["fused"] and not group["amsgrad"] and not group["differentiable"]
                        and not group["decoupled_weight_decay"] and not isinstance(group["lr"], Tensor)
                        and all(len(self.state.get(p, ())) > 0 for p in params)):
                    return None
                states = [self.state[p] for p in params]
                all_steps = torch.stack([s["step"] for s in states])
                for index, state in enumerate(states):
                    state["step"] = all_steps[index]
                lists.append((group, params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                              [s["step"] for s in states], all_steps))
            self._state_lists = lists
        return self._state_lists

    @torch.no_grad()
    def step(self, closure=None):
        """One Adam step (see the class). torch wraps every optimiser's ``step`` in a profiler range
        and its hook calls (~6 µs a call); here they run only when the profiler records or a step
        hook is registered, with torch's own wrapper (same names, same hook semantics)."""
        if (torch.autograd._profiler_enabled() or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _torch_optimizer._global_optimizer_pre_hooks or _torch_optimizer._global_optimizer_post_hooks):
            return _hooked_step(self, closure)
        return self._step(closure)

    step.hooked = True  # tells torch.optim.Optimizer not to wrap it again

    def _step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scale, self.grad_scale = self.grad_scale, None
        lists = self._fast_lists()
        grads = [[p.grad for p in group["params"]] for group in self.param_groups]
        if lists is None or any(g is None or g.is_sparse for group in grads for g in group):
            if scale is not None:
                present = [g for group in grads for g in group if g is not None]
                if present:
                    torch._foreach_div_(present, scale)
            # Adam's own step, unwrapped: torch wraps it in its hooks too once any plain Adam exists,
            # which would run the hooks twice.
            adam_step = torch.optim.Adam.step
            getattr(adam_step, "__wrapped__", adam_step)(self)
            self._state_lists = None  # the first step created the states
            return loss
        for (group, params, exp_avgs, exp_avg_sqs, steps, all_steps), group_grads in zip(lists, grads):
            beta1, beta2 = group["betas"]
            all_steps.add_(1)
            torch._fused_adam_(
                params, group_grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                beta1=float(beta1), beta2=float(beta2), weight_decay=group["weight_decay"], eps=group["eps"],
                maximize=group["maximize"], grad_scale=scale, found_inf=None,
            )
        return loss


_hooked_step = torch.optim.Optimizer.profile_hook_step(torch.no_grad()(ClippedAdam._step))


_LENGTHS: dict = {}


def _lengths_tensor(lengths: list[int], device: torch.device) -> Tensor:
    """``lengths`` as a tensor on ``device``, made once (no host-to-device copy per step)."""
    key = (tuple(lengths), device)
    if key not in _LENGTHS:
        _LENGTHS[key] = torch.tensor(lengths, device=device)
    return _LENGTHS[key]


def clip_group_gradients(groups: list[list[Tensor]], max_norm: float) -> tuple[list[Tensor], list[Tensor]]:
    """Each group's gradient norm and the divisor that clips it to ``max_norm``, from one pass.

    Returns the norms (one 0-d tensor per group, before clipping, as ``clip_grad_norm_`` returns)
    and the scales (one 0-d tensor per group): dividing a group's gradients by its scale equals
    ``clip_grad_norm_(group, max_norm)`` (coefficient ``max_norm / (norm + 1e-6)``, at most 1).
    Parameters without a gradient are skipped; nothing is modified here.

    Example:
        >>> a, b = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
        >>> a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.5])
        >>> norms, scales = clip_group_gradients([[a], [b]], max_norm=1.0)
        >>> [round(float(n), 3) for n in norms], [round(float(s), 3) for s in scales]
        ([5.0, 0.5], [5.0, 1.0])
    """
    grads, lengths = [], []
    for params in groups:
        present = [p.grad for p in params if p.grad is not None]
        grads.extend(present)
        lengths.append(len(present))
    if not grads:
        return list(torch.zeros(len(groups)).unbind()), list(torch.ones(len(groups)).unbind())
    per_parameter = torch.stack(torch._foreach_norm(grads))
    if len(groups) == 1:  # one operation instead of three (~7 µs)
        norms = torch.linalg.vector_norm(per_parameter, keepdim=True)
    else:
        lengths_tensor = _lengths_tensor(lengths, per_parameter.device)
        norms = torch.segment_reduce(per_parameter.square(), "sum", lengths=lengths_tensor).sqrt_()
    # 1 / clip coefficient, where the coefficient is min(1, max_norm / (norm + 1e-6))
    scales = norms.add(1e-6).div_(max_norm).clamp_(min=1.0)
    return list(norms.unbind()), list(scales.unbind())
