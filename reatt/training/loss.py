"""The lm_head and its cross-entropy in chunks of rows: the (rows, vocab) logits never exist whole.

``linear_cross_entropy(hidden, weight, targets, chunk=...)`` equals
``F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=-1)``, the plain loss
of ``GPT.forward``, and so do its gradients with respect to ``hidden`` and ``weight`` (within
fp32 rounding: the sums are taken in another order). It computes ``chunk`` rows at a time:

- forward: a chunk's logits ``h @ W.T`` (in bf16 under bf16 autocast, like the plain
  ``lm_head``; else fp32), their logsumexp and the target logits in fp32;
- when a gradient is wanted, in the same pass: the gradient of the chunk's logits,
  ``softmax - onehot(target)``, and from it the chunk's rows of ``dL/dhidden`` and its term of
  ``dL/dW`` (summed in fp32); ``backward`` only scales them by the incoming gradient.

So the loss holds one chunk's logits (``chunk x vocab x 4`` bytes: 512 rows of GPT-2's 50,257
are 103 MB) instead of the batch's, and their gradient in the same buffer: at B 8 x T 256 the
plain loss holds 411 MB of logits and as much again of their gradient (plus their bf16 copies
under autocast), the chunked one an eighth of that.

The chunk size (``model.loss_chunk``, rows): each chunk reads the weight twice and adds into
``dL/dW`` once, so small chunks cost weight traffic, large ones memory. Measured (CPU time of the
loss alone, a rough measurement on a shared machine; ``bench/loss.py`` is the real one) 512 rows
was at or near the fastest at n_embd 48 and 192, in fp32 and bf16, and 256 no faster. On CPU
the loss is bound by its three matmuls (the same FLOPs either way), so the gain is in the
elementwise passes over the logits, largest where n_embd is small.

Computing the gradients in the forward pass (as the fused kernels of Liger and others do) costs
no second logits matmul in the backward; it holds ``dL/dW`` (vocab x n_embd) from forward to
backward, the size of the weight itself. Under ``torch.no_grad`` (evaluation) only the loss is
computed.

Rows whose target is ``ignore_index`` add nothing to the loss or the gradients, and the mean is
over the other rows (none left: NaN, as ``F.cross_entropy`` gives).

Why not a library: torch 2.13's ``F.linear_cross_entropy`` with ``LinearCrossEntropyOptions(
batch_chunk_size=...)`` chunks the same way and equals this one in fp32 (loss and gradients, also
in speed, measured roughly on CPU). But it is a custom op that autocast does not cast: bf16 means
casting its inputs by hand, and then on CPU its policies run the weight gradient's matmul in fp32
(``"accurate"``, the CPU default: about 1.8x slower than this loss in bf16 here) or, by its own
docstring, 20-50x slower; and its bf16 loss was 2e-2 off the plain autocast loss where this one
matches it. Liger-Kernel's fused loss is Triton, CUDA only. Should torch's op gain autocast and
a fast CPU bf16 path, ``linear_cross_entropy`` below can become a call to it (the tests in
tests/test_loss.py hold either to the plain loss).
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -1  # GPT.forward's (minGPT's) ignore_index


def compute_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs a matmul in on ``device_type`` now, or None outside autocast."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where the softmax and the sums are taken: fp32 (fp64 for fp64 inputs)."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_loss(
    h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, keep: torch.Tensor, *, softmax: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sum of a chunk's losses, and a (rows, vocab) buffer: with ``softmax``, the gradient
    of that sum with respect to the chunk's logits, ``softmax - onehot(t)``; else scratch).
    ``keep`` (rows, 1): 1 for a row that counts, 0 for an ignored one (its loss and gradient
    rows are zero; its ``t`` is any valid index).

    The logits ``h @ w.T`` come from a matmul in the dtype of ``h`` and ``w``; the rest is in
    fp32, in place, in one buffer: shift by the row max, exp, sum (logsumexp's steps, written
    out so that the exp is taken once for the loss and the softmax both)."""
    logits = torch.mm(h, w.t()).to(keep.dtype)  # (c, V); .to is a no-op in fp32
    logits.sub_(logits.amax(dim=1, keepdim=True))
    target = logits.gather(1, t)  # (c, 1), shifted as its row
    sums = logits.exp_().sum(dim=1, keepdim=True)  # (c, 1)
    loss = ((sums.log() - target) * keep).sum()  # logsumexp - target logit, over the kept rows
    if softmax:
        logits.mul_(keep / sums).scatter_add_(1, t, -keep)
    return loss, logits


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets`` over the rows ``keep``
    marks, gradients computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,  # (N, d)
        weight: torch.Tensor,  # (V, d)
        targets: torch.Tensor,  # (N, 1), every one a valid index
        keep: torch.Tensor,  # (N, 1) in the accumulation dtype: 1 for a row that counts, else 0
        chunk: int,
        dtype: torch.dtype | None,  # the matmuls' dtype under autocast, None: the inputs'
    ) -> torch.Tensor:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cdtype = dtype or hidden.dtype
        h_all, w = hidden.to(cdtype), weight.to(cdtype)
        n, acc = h_all.size(0), keep.dtype
        loss_sum = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty((n, hidden.size(1)), dtype=cdtype, device=hidden.device) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        for i in range(0, n, chunk):
            h, rows = h_all[i : i + chunk], slice(i, i + chunk)
            loss, g = _chunk_loss(h, w, targets[rows], keep[rows], softmax=want_h or want_w)
            loss_sum += loss
            if want_h or want_w:
                g = g.to(cdtype)  # the matmuls in the forward's dtype, as autocast's backward does
                if grad_h is not None:
                    torch.mm(g, w, out=grad_h[rows])
                if grad_w is not None:
                    if cdtype == acc:
                        grad_w.addmm_(g.t(), h)
                    else:  # a bf16 matmul, summed over the chunks in fp32 (add_ converts as it adds)
                        grad_w.add_(torch.mm(g.t(), h))
            # freed now, not when the next chunk's result replaces it: else two chunks' logits
            # are alive at once while the next one is computed (measured: 241 MB instead of ~140)
            del g
        count = keep.sum()  # a tensor: no wait for the device
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss_sum / count  # no row kept: 0 / 0 = NaN, as F.cross_entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w, count = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        scale = grad_out / count
        dh = None if grad_h is None else (grad_h.to(scale.dtype) * scale).to(h_dtype)
        dw = None if grad_w is None else (grad_w * scale).to(w_dtype)
        return dh, dw, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk: int,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (N, V) against ``targets`` (N,), computed
    ``chunk`` rows at a time (see the module's docstring); an fp32 scalar.

    No branch on the data and no wait for the device: the ignored rows are masked (``keep``),
    not selected, so ``torch.compile`` traces it whole."""
    assert hidden.dim() == 2 and targets.shape == hidden.shape[:1], (hidden.shape, targets.shape)
    assert chunk > 0, chunk
    dtype = compute_dtype(hidden.device.type)
    valid = targets != ignore_index
    keep = valid.to(_acc_dtype(dtype or hidden.dtype)).unsqueeze(1)  # (N, 1)
    t = torch.where(valid, targets, 0).unsqueeze(1)  # (N, 1); an ignored row's is never used
    with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are chosen here
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            out: torch.Tensor = _LinearCrossEntropy.apply(hidden, weight, t, keep, chunk, dtype)
            return out
        return _loss_only(hidden, weight, t, keep, chunk, dtype)


def _loss_only(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    keep: torch.Tensor,
    chunk: int,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """The forward alone (no gradient wanted: evaluation): no gradient buffer, no softmax."""
    cdtype = dtype or hidden.dtype
    h_all, w = hidden.to(cdtype), weight.to(cdtype)
    loss_sum = torch.zeros((), dtype=keep.dtype, device=hidden.device)
    for i in range(0, h_all.size(0), chunk):
        rows = slice(i, i + chunk)
        loss_sum += _chunk_loss(h_all[rows], w, targets[rows], keep[rows], softmax=False)[0]
    return loss_sum / keep.sum()
