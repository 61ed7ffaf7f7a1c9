"""Rounding-error bounds for float32 results, derived from the arithmetic (never from one CPU's output).

Model (Higham, "Accuracy and Stability of Numerical Algorithms", ch. 2-3): every float32 operation
returns fl(a op b) = (a op b)(1 + d) with |d| <= u = 2^-24. A result that passes through n roundings
along any path (a dot product of length n in ANY summation order, blocked or vectorised, with or without
FMA: what differs between CPUs) satisfies |fl(y) - y| <= theta_n * sum_i |a_i b_i|, with

* the deterministic worst case theta_n <= gamma_n = n u / (1 - n u), and
* the probabilistic bound of Higham & Mary (SIAM J. Sci. Comput. 41(5), 2019): for rounding errors
  that are independent and mean-zero, |theta_n| <= exp(lam sqrt(n) u + n u^2 / (1 - u)) - 1
  ~ lam sqrt(n) u with probability at least 1 - 2 exp(-lam^2 (1 - u)^2 / 2). With lam = 10 a bound
  fails with probability below 4e-22 per value: no CPU's kernels can make that flaky.

The magnitude sum_i |a_i b_i| is computed exactly enough in float64 (e.g. a convolution of |W| with |X|).
"""

from __future__ import annotations

import math

U32 = 2.0 ** -24  # unit roundoff of float32 (round to nearest)
U64 = 2.0 ** -53  # unit roundoff of float64
LAMBDA = 10.0


def gamma(n: int, u: float = U32) -> float:
    """Deterministic worst case of n roundings: n u / (1 - n u)."""
    assert n * u < 1
    return n * u / (1 - n * u)


def gamma_prob(n: int, u: float = U32, lam: float = LAMBDA) -> float:
    """Higham-Mary probabilistic bound of n roundings (failure probability < 2 exp(-lam^2 / 2))."""
    return math.expm1(lam * math.sqrt(n) * u + n * u * u / (1 - u))


def network_tolerance(net, run, scale: float = 1.0, runs: int = 2, u: float = U32) -> float:
    """Float32 error model of a network's output, from the layers `run()` (a forward pass of `net`)
    actually calls. A model, not a guarantee: an output's rounding error has no finite worst case
    relative to the output itself (it is bounded relative to sum |w x|, which the elementwise tests use).
    The rounding errors of a K-term sum of mixed-sign terms walk randomly to ~ u sqrt(K) |y|; the
    model allows lambda = 10 times that per layer and adds the layers up (they add in quadrature):

    * a convolution or linear layer adds a relative error of gamma_prob(K + 8) = 10 sqrt(K + 8) u, K its
      reduction length (products summed in any order; 8 more roundings for bias, activation and so on);
    * an instance norm over n = H x W values adds 4 gamma_prob(n + 8): its mean and variance are sums of
      n terms, and its error relative to sigma has four parts, |x - mu|, mean|x|, |x| and |mu|
      (see test_cpu_kernels._instance_norm_bound), each about sigma in size after a convolution;
    * normalised layers pass relative errors on without growth, and the heads (tanh, sigmoid) are
      1-Lipschitz.

    So `runs` evaluations of an output of magnitude `scale`, in different summation orders (kernels,
    batch sizes, fused or not, another CPU), differ by at most runs * scale * (sum over the calls)."""
    import torch

    terms: list[float] = []

    def hook(module, inputs, _output):
        x = inputs[0]
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            k = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
            terms.append(gamma_prob(k + 8, u))
        elif isinstance(module, torch.nn.Linear):
            terms.append(gamma_prob(module.in_features + 8, u))
        elif isinstance(module, torch.nn.InstanceNorm2d):
            terms.append(4 * gamma_prob(x.shape[-1] * x.shape[-2] + 8, u))

    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear, torch.nn.InstanceNorm2d)
    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    assert terms, "the run called none of the network's layers"
    return runs * scale * sum(terms)


def lwb_tolerance(generator, width: int, runs: int = 2) -> float:
    """Relative error model of a Liquid Warping generator's outputs (and gradients) run in float64.

    The LWB warps sample in float32 by design (gan/generator.py `_sample`, and the CPU sampler's
    float32 tap weights), so each of the F fused maps enters with a relative error of at most
    eta = u (rounding the map) + gamma_4 (the 4-tap sum) + 2 gamma_3 (w - 1) (the sampling position,
    off by gamma_3 (w - 1) pixels in x and in y, times a neighbour difference <= 2 max|f|), w = the
    widest fused map (half the image width). Those errors pass through the normalised layers like one
    more float32 layer each (see network_tolerance). The float64 arithmetic itself adds at most
    gamma_prob(K + n, 2^-53) per layer (K <= 8 C_max * 49, n <= width^2): ~1e-11 in all. `runs`
    computations are compared."""
    import torch

    w = width // 2
    eta = U32 + gamma(4) + 2 * gamma(3) * (w - 1)
    fused = len(generator.src_model.encoders) - 1 + len(generator.src_model.resnets)
    layers = [m for m in generator.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    k_max = max(m.in_channels * m.kernel_size[0] * m.kernel_size[1] for m in layers)
    float64 = 2 * len(layers) * gamma_prob(k_max + width * width, U64)
    return runs * (fused * eta + float64)


def to_float64(obj):
    """A copy of `obj` with every floating tensor in float64: tensors, (frozen) dataclasses, named
    tuples, tuples and lists, recursively; everything else unchanged. For running a computation and
    its reference in float64, where summation order changes results by ~1e-16 relative only."""
    import dataclasses

    import torch

    if isinstance(obj, torch.Tensor):
        return obj.double() if obj.is_floating_point() else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        values = {f.name: to_float64(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return type(obj)(**values)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_float64(v) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_float64(v) for v in obj)
    return obj

