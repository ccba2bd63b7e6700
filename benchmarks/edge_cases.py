"""What jaxent, optax and PyTorch return on the inputs that break naive code.

``python benchmarks/edge_cases.py`` prints a markdown table (pasted into
the README's edge-case section): value and gradient of each library on the same edge
input, next to the exact answer. PyTorch is optional (the column reads
"n/a" when it is not installed). Runs in float32 unless a row says otherwise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxent

try:  # optional peer
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None

NINF = -np.inf


def fmt(x) -> str:
    x = np.asarray(x, np.float64).reshape(-1)
    out = []
    for v in x:
        if np.isnan(v):
            out.append("**nan**")
        elif np.isinf(v):
            out.append("inf" if v > 0 else "-inf")
        elif v == 0:
            out.append("0")
        else:
            out.append(f"{v:.4g}")
    return out[0] if len(out) == 1 else "[" + ", ".join(out) + "]"


def jax_vg(fn, *args, argnum=0):
    return jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=argnum)(*args)


def torch_vg(fn, *args, argnum=0):
    if torch is None:
        return None
    ts = [torch.tensor(np.asarray(a, np.float32)) if i == argnum else a for i, a in enumerate(args)]
    ts[argnum].requires_grad_(True)
    out = fn(*ts).sum()
    out.backward()
    return out.detach().numpy(), ts[argnum].grad.numpy()


ROWS: list[tuple[str, str, str, str, str, str]] = []


def row(case, quantity, exact, jx, ox, tx):
    ROWS.append((case, quantity, exact, jx, ox, "n/a" if tx is None else tx))


def both(case, exact_v, exact_g, j, o, t, gname):
    row(case, "value", exact_v, fmt(j[0]), fmt(o[0]), None if t is None else fmt(t[0]))
    row(case, gname, exact_g, fmt(j[1]), fmt(o[1]), None if t is None else fmt(t[1]))


def main() -> None:
    np.seterr(divide="ignore")  # log(0) = -inf is an input here
    f32 = jnp.float32

    # 1. softmax CE, integer label, one class at -inf
    z = jnp.array([[0.0, NINF, 1.0]], f32)
    y = jnp.array([0])
    j = jax_vg(jaxent.softmax_cross_entropy_with_integer_labels, z, y)
    o = jax_vg(optax.losses.softmax_cross_entropy_with_integer_labels, z, y)
    t = torch_vg(lambda a, b: F.cross_entropy(a, b, reduction="none"), z, torch.tensor([0]))
    p1 = 1 / (1 + math.e)
    both(
        "CE, label 0, logits [0, -inf, 1]",
        fmt(math.log1p(math.e)),
        fmt([p1 - 1, 0, 1 - p1]),
        j,
        o,
        t,
        "d/dlogits",
    )

    # 2. softmax CE, fully masked row (all logits -inf; jaxent also via where=False)
    z = jnp.full((1, 3), NINF, f32)
    j = jax_vg(jaxent.softmax_cross_entropy_with_integer_labels, z, y)
    o = jax_vg(optax.losses.softmax_cross_entropy_with_integer_labels, z, y)
    t = torch_vg(lambda a, b: F.cross_entropy(a, b, reduction="none"), z, torch.tensor([0]))
    both("CE, fully masked row (all -inf)", "0 (by convention)", "[0, 0, 0]", j, o, t, "d/dlogits")
    zf = jnp.zeros((1, 3), f32)
    jw = jax_vg(
        lambda a: jaxent.softmax_cross_entropy_with_integer_labels(a, y, where=jnp.array([False])),
        zf,
    )
    ow = jax_vg(
        lambda a: optax.losses.softmax_cross_entropy(
            a, jax.nn.one_hot(y, 3), where=jnp.zeros((1, 3), bool)
        ),
        zf,
    )
    both("CE, row removed by `where`", "0", "[0, 0, 0]", jw, ow, None, "d/dlogits")

    # 3. KL with a zero in the target p: D(p||q), p = [0.5, 0.5, 0]
    p = jnp.array([0.5, 0.5, 0.0], f32)
    q = jnp.array([0.25, 0.25, 0.5], f32)
    j = jax_vg(jaxent.kl_divergence, p, q)
    o = jax_vg(lambda t_, lq: optax.losses.kl_divergence(lq, t_), p, jnp.log(q))
    t = torch_vg(
        lambda t_, lq: F.kl_div(lq, t_, reduction="sum"), p, torch.log(torch.tensor(np.asarray(q)))
    )
    both("KL(p‖q), zero in target p", fmt(math.log(2)), "[1.693, 1.693, 0]", j, o, t, "d/dp")

    # 4. KL with a zero in q where p > 0: the true value is +inf
    p = jnp.array([0.5, 0.5], f32)
    q = jnp.array([1.0, 0.0], f32)
    j = jax_vg(jaxent.kl_divergence, p, q, argnum=1)
    o = jax_vg(lambda lq, t_: optax.losses.kl_divergence(lq, t_), jnp.log(q), p)
    t = torch_vg(
        lambda lq, t_: F.kl_div(lq, t_, reduction="sum"),
        np.log(np.asarray(q)),
        torch.tensor(np.asarray(p)),
    )
    both(
        "KL(p‖q), q = 0 where p > 0",
        "inf",
        "d/dq = [-0.5, -inf]; d/dlog q = [-0.5, -0.5]",
        j,
        o,
        t,
        "d/dq (jaxent) · d/dlog q (optax, torch)",
    )

    # 5. sigmoid BCE at z = 50, y = 1
    z = jnp.array([50.0], f32)
    yb = jnp.array([1.0], f32)
    j = jax_vg(jaxent.sigmoid_binary_cross_entropy, z, yb)
    o = jax_vg(optax.losses.sigmoid_binary_cross_entropy, z, yb)
    t = torch_vg(
        lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="none"),
        z,
        torch.tensor([1.0]),
    )
    both("sigmoid BCE, z = 50, y = 1", "1.929e-22", "-1.929e-22", j, o, t, "d/dz")

    # 6. logits +-3e38 (float32), label on the middle class
    z = jnp.array([[3e38, -3e38, 0.0]], f32)
    y2 = jnp.array([2])
    j = jax_vg(jaxent.softmax_cross_entropy_with_integer_labels, z, y2)
    o = jax_vg(optax.losses.softmax_cross_entropy_with_integer_labels, z, y2)
    t = torch_vg(lambda a, b: F.cross_entropy(a, b, reduction="none"), z, torch.tensor([2]))
    both("CE, logits [3e38, -3e38, 0], label 2", "3e+38", "[1, 0, -1]", j, o, t, "d/dlogits")

    # 7. bfloat16, one row of 32768 classes
    rng = np.random.default_rng(0)
    z64 = rng.normal(size=(1, 32768)) * 3
    zb = jnp.asarray(z64, jnp.bfloat16)
    zr = np.asarray(zb, np.float64)
    yy = np.array([123])
    m = zr.max()
    lse = m + np.log(np.exp(zr - m).sum())
    exact = lse - zr[0, 123]
    gx = np.exp(zr - lse)
    gx[0, 123] -= 1
    j = jax_vg(jaxent.softmax_cross_entropy_with_integer_labels, zb, jnp.asarray(yy))
    o = jax_vg(optax.losses.softmax_cross_entropy_with_integer_labels, zb, jnp.asarray(yy))
    if torch is not None:
        tz = torch.tensor(np.asarray(zb, np.float32)).to(torch.bfloat16).requires_grad_(True)
        tl = F.cross_entropy(tz, torch.tensor(yy), reduction="sum")
        tl.backward()
        t = (tl.float().detach().numpy(), tz.grad.float().numpy())
    else:
        t = None

    def err(v):
        v = np.asarray(v, np.float64)
        return f"{v.item():.6g} (err {abs(v.item() - exact):.2g})"

    def gerr(g):
        g = np.asarray(g, np.float64)
        return f"max err {np.abs(g - gx).max():.2g}"

    row(
        "bf16 row of 32768 classes",
        "value (error vs float64)",
        f"{exact:.6g}",
        err(j[0].astype(jnp.float32)),
        err(o[0].astype(jnp.float32)),
        None if t is None else err(t[0]),
    )
    row(
        "bf16 row of 32768 classes",
        "d/dlogits (vs float64)",
        "softmax − onehot",
        gerr(j[1].astype(jnp.float32)),
        gerr(o[1].astype(jnp.float32)),
        None if t is None else gerr(t[1]),
    )
    row(
        "bf16 row of 32768 classes",
        "output dtype",
        "bfloat16",
        str(j[0].dtype),
        str(o[0].dtype),
        None if t is None else "bfloat16",
    )

    vers = f"jax {jax.__version__}, optax {optax.__version__}"
    vers += f", torch {torch.__version__}" if torch is not None else ", torch not installed"
    print(f"<!-- generated by `python benchmarks/edge_cases.py` ({vers}) -->\n")
    print("| case | quantity | exact | jaxent | optax | PyTorch |")
    print("|---|---|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
