"""projected_gradient_sq(grad, U): the squared norm of the projected gradient of a factor U >= 0.

    ||P(grad)||^2,  P(grad) = grad where U > 0, min(grad, 0) where U = 0,

the first-order stationarity measure on which every classical solver stops. A NaN in grad gives NaN,
whatever U is there, and so does a NaN or an infinity in U. Every entry is squared and summed in float64, and
the result is a float64 0-d tensor whatever grad's dtype: the square of a float32 entry leaves float32's range
below about 1e-19 and above 1e19, where a solver's first measure read 0 and it stopped "converged" at the start,
or inf and it reported a divergence. On the CPU the extension's kernel (csrc/cpu/projected_gradient_cpu.cpp)
makes one pass over grad and U with no temporaries, in an order that does not depend on the number of threads.
On a GPU the Triton kernel (symnmf_kernels/triton/projected_gradient.py) does the same in one pass, where
torch's form makes about six (the masks, the selection, the squares, the sum and U's extremes). Elsewhere
(without the extension, under torch.compile, or where a gradient is recorded) the sum runs in torch.
"""
import torch

from . import _launch
from ._common import check_same, check_tensor, use_triton
from .._extension import has_cpu_op

__all__ = ["projected_gradient_sq"]

_NATIVE = has_cpu_op("projected_gradient_sq")

if _NATIVE:
    @torch.library.register_fake("symnmf_kernels::projected_gradient_sq")
    def _(grad, U):
        return grad.new_empty((), dtype=torch.float64)


def _torch(grad, U):
    dropped = (U <= 0) & (grad >= 0)
    total = torch.where(dropped, torch.zeros((), dtype=grad.dtype, device=grad.device), grad).double().pow(2).sum()
    if U.numel():  # NaN when U holds a NaN or an infinity, as a NaN gradient gives (a sum could overflow)
        low, high = torch.aminmax(U)
        total = total + 0 * (high - low)
    return total


def _check(t, name):
    # check_tensor without its rule against empty dimensions: a rank of a sharded solver may hold no rows.
    if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.numel() == 0:
        return
    check_tensor(t, name)


def projected_gradient_sq(grad, U):
    """||P(grad)||^2 for grad and U of one shape and dtype (two or more dimensions); a float64 0-d tensor
    (0 for empty tensors)."""
    _check(grad, "grad")
    _check(U, "U")
    check_same(U, grad, "U", "grad")
    if grad.shape != U.shape:
        raise ValueError(f"grad has shape {tuple(grad.shape)} but U has {tuple(U.shape)}; they must match")
    if grad.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"grad must be float32 or float64, got {grad.dtype}; convert it with grad.float()")
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (grad.requires_grad or U.requires_grad)):
        return _torch(grad, U)  # the kernels have no backward: a measure that needs a gradient runs in torch
    if _NATIVE and grad.device.type == "cpu":
        return torch.ops.symnmf_kernels.projected_gradient_sq(grad, U)
    if use_triton(grad):
        return _triton(grad, U)
    return _torch(grad, U)


def _triton(grad, U):
    if grad.numel() == 0:
        return grad.new_zeros((), dtype=torch.float64)
    # Flattened in memory order: a copy only for a view that is not contiguous.
    partials = _launch.projected_gradient_partials(grad.contiguous().reshape(-1), U.contiguous().reshape(-1))
    return partials.sum()
