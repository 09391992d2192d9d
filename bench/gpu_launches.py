"""The ops' Triton launches as a GPU would make them, on a machine without one.

Inside `gpu_launches(on_launch)` every Triton launch calls on_launch(kernel, args, kwargs, grid) instead of
running, and the launchers (symnmf_kernels.ops._launch) size their tiles, splits and blocks for a GPU of 132 SMs,
where the interpreter's own geometry is smaller. The launch-grid test, the host-time benchmark and the compile
report as launched all see the launches this way; nothing here needs a GPU or runs a kernel.
"""
import contextlib
import types

from symnmf_kernels.ops import _common, _launch
from symnmf_kernels.triton.gram import gram_partials_kernel

GPU = types.SimpleNamespace(type="cuda", index=0)  # what the geometry functions read of a device
SM_COUNT = 132  # an H100 SXM's or H200's
GEOMETRY = ("tiles", "split_rows", "block_n", "hals_tiles")  # ops._common functions of (..., device)


@contextlib.contextmanager
def gpu_launches(on_launch, patches=()):
    """Every launch handed to on_launch(kernel, args, kwargs, grid) and skipped, with a GPU's launch geometry;
    patches: more (object, attribute, value) replacements for the block, undone with the rest at its end.

    The kernel type is that of the kernels as imported (a JITFunction, or the interpreter's stand-in under
    TRITON_INTERPRET=1), so the interception holds either way.
    """
    kernel_type = type(gram_partials_kernel)

    def run(self, *args, grid, warmup=False, **kwargs):
        on_launch(self, args, kwargs, grid)

    replacements = [(kernel_type, "run", run), (_common, "_sm_count", lambda index: SM_COUNT)]
    for name in GEOMETRY:
        replacements.append((_launch, name, lambda *a, _fn=getattr(_common, name): _fn(*a[:-1], GPU)))
    replacements += list(patches)
    saved = []
    try:
        for obj, name, value in replacements:
            saved.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def kernel_name(kernel):
    """The name of a launched kernel (a JITFunction's or the interpreter's stand-in's)."""
    return getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", "?")
