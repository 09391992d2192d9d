"""SymNMF-Net's training objective for a sparse X, as one autograd node.

Op by op (`SymNMFNet._objective`), a training step is about 25 autograd nodes: a
block and a layer loss per layer, each a Python autograd Function with its
argument checks, reshapes and dispatch. On the CPU those cost more than a
millisecond a step whatever the graph's size: a step took 2.8 ms op by op and
1.2 ms here at n = 300, 16.3 and 12.9 ms at n = 20,000 (docs/cpu_backend.md,
"The net's chain in one node"). On a GPU the nodes' boundaries cost memory
traffic instead: each weight's two gradients summed by autograd, the
regulariser's residual formed twice (docs/gpu_performance.md, "SymNMF-Net's
chain on the GPU"). Here the whole chain, forward and backward, calls the same
kernels with the same formulas from one node. What does not change during a fit (X's CSR
arrays, ||X||^2, the start's Gram U_0^T U_0 and its product X U_0) is prepared
once, and the backward walks the blocks in reverse by hand:

    U_i = ReLU(P_i (G_{i-1} + lam I)^{-1}), G_i = U_i^T U_i          (`NetChain.block`)
    S_i = X U_i, R_i = P_{i+1} - S_i - lam U_i                       (`NetChain.terms`)
    loss = sum_i w_i ||X - U_i U_i^T||^2 + beta sum_{i<L} ||R_i||^2 + beta ||R_0||^2 + mu ||U_L||_1

with w_i = 1 for the blocks whose residual is in the loss and R_0 = P_1 - X U_0 - lam U_0. For one problem
with upstream gradient g, gl = w_i g and gr = beta g, layer i's backward is

    dU_i = -4 gl S_i - 2 gr (X R_i + lam R_i)   (+ mu g at i = L)      (`NetChain.loss_grad`)
    D_i = 2 gl G_i + dG_i, where block i + 1 gave dG_i
    dP_i, dGinv_i = the block's backward of dU_i + U_i (D_i + D_i^T),
        plus 2 gr R_{i-1} in dP_i                                     (`NetChain.block_backward`)
    dG_{i-1} = sym(-Ginv_i dGinv_i Ginv_i), dlam += trace(dG_{i-1})
    dlam -= 2 gr <R_i, U_i>

with R_0 = P_1 - X U_0 - lam U_0 the start's residual (its -2 beta g <R_0, U_0> also in dlam). The values and
gradients are those of the op-by-op objective (tests/test_net_chain.py compares them).
"""
import torch

from symnmf_kernels.ops import _launch
from symnmf_kernels.ops._common import dot64, first_order_only, torch_path_cpu, use_triton
from symnmf_kernels.ops.apply_relu import _fused_native, apply_relu_backward_torch, apply_relu_gram_torch
from symnmf_kernels.ops.gram import tall_gram
from symnmf_kernels.ops.sparse_loss import _NATIVE_LOSS, _times_x
from symnmf_kernels.ops.spd_inverse import spd_inverse_torch
from symnmf_kernels.sparse import as_csr

__all__ = ["NetChain"]


def _col(t):
    """A (B,) tensor as (B, 1, 1), to scale (B, n, r) tensors."""
    return t[:, None, None]


class NetChain:
    """The fixed parts of one fit, prepared once: `NetChain(X, U0, S0)(P, lam, weights, beta, mu)` gives
    (loss, residual of U_L, U_L) per problem, the loss and the residual differentiable in P and lam (a backward
    through U_L raises). X: a sparse, exactly symmetric (n, n) X; U0 (..., n, r): the start; S0: X U0.

    Two sets of kernels run the same chain: the extension's CPU row loops (the SpMM fused with the passes
    around it), and on a GPU (or under the Triton interpreter) the Triton kernels beside the SpMM. On the
    GPU the chain moves less memory than the op-by-op objective: R_i is stored by the forward's terms pass
    (never formed again, nor its multiple 2 beta R_i), the backward's gradient pass takes R_i and X R_i with
    the regulariser's coefficient, and the block's backward adds 2 beta R_{i-1} to dP_i as it stores dP_i,
    where autograd summed the two gradients of each weight in a pass of its own (docs/gpu_performance.md,
    "SymNMF-Net's chain on the GPU").
    """

    @staticmethod
    def applies(X, U0):
        """Whether the chain runs for this X and start: a sparse (n, n) X on U0's device, eager mode, and
        either the Triton kernels (a GPU, or the interpreter) or the extension's CPU kernels on a CPU path
        that the ops themselves would take."""
        n, r = U0.shape[-2:]
        if X.layout == torch.strided or X.device != U0.device or tuple(X.shape) != (n, n):
            return False
        if torch.compiler.is_compiling():
            return False
        if use_triton(U0, r):
            return True
        return _NATIVE_LOSS and X.is_cpu and torch_path_cpu(U0)

    def __init__(self, X, U0, S0):
        A = as_csr(X)
        if not A.is_symmetric():
            raise ValueError("the net's chain needs an exactly symmetric X (SymNMFNet._prepare makes it so)")
        n, r = U0.shape[-2:]
        self.batch = U0.shape[:-2]
        self.B = U0.numel() // (n * r)
        self.csr = (A.crow_indices, A.col_indices, A.values)
        self.x_sq = A.squared_norm()
        self.U0 = U0.reshape(self.B, n, r).contiguous()
        self.S0 = S0.reshape(self.B, n, r).contiguous()
        self.triton = use_triton(self.U0, r)
        self.G0 = tall_gram(self.U0, self.U0)
        self.eye = torch.eye(r, dtype=U0.dtype, device=U0.device)
        # Whether the block's products take the extension's fused row loops, decided once (shapes and dtype do
        # not change during a fit) rather than by the helpers' checks at each of a step's 2 L calls: at n = 300
        # those checks took 0.15 ms of a 1.1-1.4 ms step. Otherwise the helpers take torch's products.
        self.fused_block = not self.triton and _fused_native(self.U0, self.G0, self.U0)
        self._weights = {}

    def __call__(self, P, lam, weights, beta, mu):
        """P: the L weights (..., n, r); lam (...); weights: L floats, 1.0 where a block's residual is in the
        loss and 0.0 where not; beta, mu: floats."""
        loss, residual, U = _Chain.apply(self, tuple(float(w) for w in weights), float(beta), float(mu), lam, *P)
        return loss.reshape(self.batch), residual.reshape(self.batch), U.reshape(*self.batch, *U.shape[-2:])

    def weight_vector(self, weights):
        """The layers' weights as a float64 tensor on the chain's device, made once: a copy to the device at
        every step would be a host-to-device transfer, which a CUDA graph's capture cannot hold."""
        w = self._weights.get(weights)
        if w is None:
            w = self._weights[weights] = torch.tensor(weights, dtype=torch.float64, device=self.U0.device)
        return w

    def lam_term(self, lam_b):
        """What `inverse` adds to a Gram: lam_b (B,) itself for the Triton kernel, which adds it as it loads the
        Gram; lam I (B, r, r), formed once a step, on the CPU."""
        return lam_b if self.triton else _col(lam_b) * self.eye

    def inverse(self, G, lam_term):
        """(G + lam I)^{-1}, NaN where G + lam I is not positive definite."""
        if self.triton:
            return _launch.spd_inverse(G, lam_term)[0]
        return spd_inverse_torch(G + lam_term)[0]

    def block(self, P, Ginv):
        """(U, U^T U) with U = ReLU(P Ginv)."""
        if self.triton:
            return _launch.apply_relu_gram(P, Ginv)
        if self.fused_block:
            return torch.ops.symnmf_kernels.tall_apply_relu_gram(P, Ginv)
        return apply_relu_gram_torch(P, Ginv)

    def terms(self, U, P_next, lam_b):
        """(S, R, sums) of a layer: S = X U, R = P_next - S - lam U (None without P_next) and the float64 sums
        (B, 3) = (<S, U>, ||R||^2, <R, U>)."""
        if self.triton:
            S = _times_x(*self.csr, U, False)
            sums, _, R = _launch.sparse_loss_terms(U, S, P_next, lam_b, with_gram=False, write_r=True)
            return S, R, sums
        S, R, sums = torch.ops.symnmf_kernels.sparse_loss_terms_csr(*self.csr, U, P_next, lam_b)
        return S, (R if P_next is not None else None), sums

    def loss_grad(self, S, R, lam_b, coef_s, coef_r):
        """dL/dU of a layer with a regulariser: coef_s S - coef_r (X R + lam R)."""
        if self.triton:
            return _launch.sparse_loss_grad(S, S, None, R, _times_x(*self.csr, R, False), lam_b, coef_s, None, coef_r)
        return torch.ops.symnmf_kernels.sparse_loss_grad_csr(*self.csr, None, S, R, lam_b, coef_s, coef_r)

    def start_residual(self, P1, lam_b):
        """(R_0, ||R_0||^2, <R_0, U_0> or None) of the start's regulariser, R_0 = P_1 - X U_0 - lam U_0, the
        sums in float64 per problem: on the Triton path from the terms pass that forms R_0, on the CPU <R_0, U_0>
        is left to the backward, which needs it only when lam learns."""
        if self.triton:
            sums, _, R0 = _launch.sparse_loss_terms(self.U0, self.S0, P1, lam_b, with_gram=False, write_r=True)
            return R0, sums[:, 1], sums[:, 2]
        R0 = torch.sub(P1, self.S0).addcmul_(_col(lam_b), self.U0, value=-1)  # one n x r allocation
        return R0, dot64(R0, R0), None

    def block_backward(self, grad, U, P, Ginv, D, extra):
        """(dP, E) of U = ReLU(P Ginv) given dL/dU = grad + U (D + D^T), with dP + c R added for extra = (R, c):
        E's symmetric part is minus the gradient of the Gram that Ginv inverts."""
        if self.triton:
            dP, dG, _ = _launch.apply_relu_inverse_backward(grad, U, P, Ginv, D, sym_h=True, dp_extra=extra)
            return dP, dG.neg_()
        H = D + D.mT
        if self.fused_block:
            dP, dGinv = torch.ops.symnmf_kernels.tall_apply_relu_backward(grad, U, P, Ginv, H)
        else:
            dP, dGinv = apply_relu_backward_torch(grad, U, P, Ginv, H, True, True)
        dP.addcmul_(extra[0], _col(extra[1]))
        return dP, Ginv @ dGinv @ Ginv


class _Chain(torch.autograd.Function):
    # The r x r algebra and the per-problem scalars are batched over the layers where the order allows (the
    # residuals and sums after the forward's loop, the traces after the backward's): at n = 300 a step's small
    # tensor operations cost as much as its kernels.

    @staticmethod
    def forward(ctx, chain, weights, beta, mu, lam, *P):
        B, n, r = chain.U0.shape
        lam_b = lam.reshape(-1).expand(B).contiguous()
        lam_term = chain.lam_term(lam_b)
        Ps = [p.reshape(B, n, r).contiguous() for p in P]  # the row loops take row-major factors
        L = len(Ps)
        layers, grams, sums = [], [], []
        G = chain.G0
        for i in range(L):
            Ginv = chain.inverse(G, lam_term)
            U, G = chain.block(Ps[i], Ginv)
            S, R, layer_sums = chain.terms(U, Ps[i + 1] if i + 1 < L else None, lam_b)
            layers.append((Ginv, U, G, S, R))
            grams.append(G)
            sums.append(layer_sums)
        # residual_i = ||X||^2 - 2 <S_i, U_i> + ||G_i||^2 per layer and problem, in float64
        g = torch.linalg.vector_norm(torch.stack(grams), dim=(-2, -1), dtype=torch.float64)
        sums = torch.stack(sums)  # (L, B, 3): <S, U>, ||R||^2, <R, U>
        residuals = torch.addcmul(chain.x_sq, g, g).sub_(sums[..., 0], alpha=2)
        total = torch.mv(residuals.mT, chain.weight_vector(weights))
        R0, rr0, ru0 = chain.start_residual(Ps[0], lam_b)
        total.add_(sums[:-1, :, 1].sum(0) + rr0, alpha=beta)
        if mu:
            total.add_(U.sum((-2, -1), dtype=torch.float64), alpha=mu)
        # The layers' tensors are saved for the backward like the inputs: autograd frees them when the backward
        # ends (held on ctx they lived until the next step's outputs replaced these, 3 L more factors the size of
        # U_0 through that step), keeps them under retain_graph, and refuses a backward after one of them (U_L,
        # lam) was changed in place. At the backward's peak they are held with every weight's gradient, about
        # 4 L factors the size of U_0: within `net.training_factors`.
        ctx.chain, ctx.weights, ctx.beta, ctx.mu = chain, weights, beta, mu
        ctx.n_layers, ctx.lam_shape = L, lam.shape
        ctx.ru = sums[:-1, :, 2].sum(0)  # sum of <R_i, U_i> over the layers' regularisers, for lam's gradient
        ctx.ru0 = ru0
        ctx.save_for_backward(*P, *(t for layer in layers for t in layer), R0, lam_b)
        ctx.set_materialize_grads(False)  # no n x r of zeros for U_L's gradient, which is never used
        return total.to(U.dtype), residuals[-1].to(U.dtype), U

    @staticmethod
    @first_order_only
    def backward(ctx, grad_loss, grad_residual, grad_U):
        if grad_U is not None:
            raise RuntimeError("the net's chain differentiates its loss and residual, not U_L: differentiate a "
                               "function of U_L through the op-by-op objective (SymNMFNet._objective without chain)")
        chain, weights, beta, mu = ctx.chain, ctx.weights, ctx.beta, ctx.mu
        B, n, r = chain.U0.shape
        dtype = chain.U0.dtype
        L = ctx.n_layers
        saved = ctx.saved_tensors
        P, R0, lam_b = saved[:L], saved[-2], saved[-1]
        layers = [saved[L + 5 * i: L + 5 * i + 5] for i in range(L)]  # (Ginv, U, G, S, R) of each layer
        Ps = [p.reshape(B, n, r).contiguous() for p in P]  # the row loops take row-major factors
        g = grad_loss.reshape(-1).expand(B).to(dtype) if grad_loss is not None else lam_b.new_zeros(B)
        two_gr = 2 * beta * g  # a regulariser's weight in its gradients: dP += 2 gr R, dU -= 2 gr (X R + lam R)
        dP = [None] * L
        # dP_i's second gradient, from the regulariser of P_i against the previous block's output (R_0: the start's)
        extras = [R0] + [layer[4] for layer in layers[:-1]]
        # E_i = Ginv_i dGinv_i Ginv_i: the gradient of G_{i-1} is -E_i symmetrised. Its symmetric part is all that
        # reaches anything (H = D + D^T and the trace for lam), so -E_i itself is added.
        E, traces = None, []
        for i in reversed(range(L)):
            Ginv, U, G, S, R = layers[i]
            gl = g * weights[i] if weights[i] != 1.0 else g
            if i == L - 1 and grad_residual is not None:
                gl = gl + grad_residual.reshape(-1).expand(B).to(dtype)
            D = G * _col(2 * gl)  # the gradient of ||G_i||^2 ...
            if E is not None:
                D.sub_(E)  # ... and of G_i from block i + 1
            if R is not None:
                dU = chain.loss_grad(S, R, lam_b, -4 * gl, two_gr)
            else:
                dU = S * _col(-4 * gl)
                if mu:
                    dU.add_(_col(mu * g))
            dP[i], E = chain.block_backward(dU, U, Ps[i], Ginv, D, (extras[i], two_gr))
            traces.append(E)
        dlam = None
        if ctx.needs_input_grad[4]:
            trace = torch.stack(traces).diagonal(dim1=-2, dim2=-1).sum((0, -1), dtype=torch.float64)
            # and the start's: on the CPU a pass over n x r data, only when lam learns
            ru = ctx.ru + (ctx.ru0 if ctx.ru0 is not None else dot64(R0, chain.U0))
            dlam = (-trace - two_gr.double() * ru).to(dtype).sum_to_size(ctx.lam_shape)
        return (None, None, None, None, dlam, *(d.reshape(p.shape) for d, p in zip(dP, P)))
