"""Static checks agree across functions (issue 9, defect 12).

Every public function that takes an argument of a given kind is called with the
same bad value of that kind and must behave the same way: ``np.int64`` as
``ignore_index`` is accepted everywhere (and equals the Python int), a bool
``z_loss`` / ``label_smoothing`` / ``epsilon`` / ``logit_softcap`` is a
``TypeError``, a float or integer ``where`` is a ``TypeError``, a wrong
``axis_name`` is a named ``TypeError``/``ValueError`` (not a raw ``NameError``),
and ``verify(fd_step=0)`` is a ``ValueError``.

The functions are found from the public namespace and their signatures, and
their inputs are built from argument names (``logits``, ``labels``, ``p``, ...),
so a new function is covered without editing this file; a function whose
inputs cannot be built fails ``test_every_function_can_be_called``.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxent

B, K, D = 3, 4, 5


def _inputs(rng):
    z = rng.normal(size=(B, K)).astype(np.float32)
    p = rng.dirichlet(np.ones(K), size=B).astype(np.float32)
    return {
        "logits": z,
        "p_logits": z,
        "q_logits": z[::-1].copy(),
        "student_logits": z,
        "member_logits": rng.normal(size=(2, B, K)).astype(np.float32),
        "p": p,
        "q": p[::-1].copy(),
        "probs": rng.uniform(0.1, 0.9, size=(B, K)).astype(np.float32),
        "losses": rng.uniform(size=(B, K)).astype(np.float32),
        "log_p": -rng.uniform(0.1, 2, size=(B,)).astype(np.float32),
        "log_q": -rng.uniform(0.1, 2, size=(B,)).astype(np.float32),
        "mean_p": z,
        "mean_q": z[::-1].copy(),
        "std_p": np.ones((B, K), np.float32),
        "std_q": np.full((B, K), 2.0, np.float32),
        "hidden": rng.normal(size=(B, D)).astype(np.float32),
        "weight": rng.normal(size=(D, K)).astype(np.float32),
        "p_hidden": rng.normal(size=(B, D)).astype(np.float32),
        "p_weight": rng.normal(size=(D, K)).astype(np.float32),
        "q_hidden": rng.normal(size=(B, D + 1)).astype(np.float32),
        "q_weight": rng.normal(size=(D + 1, K)).astype(np.float32),
        "teacher_indices": np.array([[0, 1], [2, 3], [1, 0]]),
        "teacher_log_probs": np.log(np.full((B, 2), 0.4, np.float32)),
        "epsilon": 0.1,
        "num_classes": K,
        "loss_fn": jaxent.softmax_cross_entropy,
    }


def _labels_for(fn, rng):
    """Integer labels when the function takes them, else probability labels."""
    params = inspect.signature(fn).parameters
    name = fn.__name__
    if name in ("sigmoid_binary_cross_entropy", "binary_cross_entropy"):
        return rng.uniform(size=(B, K)).astype(np.float32)
    if "ignore_index" in params or "integer" in name or "log_prob" in name:
        return np.array([0, 3, 1])
    if name in ("brier_score", "smooth_labels"):
        return np.array([0, 3, 1])
    return rng.dirichlet(np.ones(K), size=B).astype(np.float32)


def _public():
    out = []
    for n in sorted(dir(jaxent)):
        f = getattr(jaxent, n)
        if n.startswith("_") or not inspect.isfunction(f) or n in ("checked", "verify"):
            continue
        if not f.__module__.startswith("jaxent"):
            continue
        if any(p in inspect.signature(f).parameters for p in ("axis_name",)):
            continue  # vocab-parallel: called inside shard_map below
        out.append(n)
    return out


PUBLIC = _public()


def _call(name, _dtype=None, **override):
    """Calls ``jaxent.<name>`` on inputs built from its argument names.

    ``_dtype`` casts every floating input to that dtype (``tests/test_dtype_matrix.py``).
    """
    fn = getattr(jaxent, name)
    rng = np.random.default_rng(12)
    pool = _inputs(rng)
    pool["labels"] = _labels_for(fn, rng)
    if _dtype is not None:
        pool = {
            k: jnp.asarray(v).astype(_dtype)
            if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)
            else v
            for k, v in pool.items()
        }
    args = {}
    for pname, par in inspect.signature(fn).parameters.items():
        if pname in override:
            args[pname] = override[pname]
        elif par.default is inspect.Parameter.empty:
            if pname == "where":
                args[pname] = None
            else:
                args[pname] = pool[pname]
        elif pname == "num_classes" and np.issubdtype(np.asarray(pool["labels"]).dtype, np.integer):
            args[pname] = K  # integer labels need the class count
    return fn(**args)


def test_every_function_can_be_called():
    for name in PUBLIC:
        _call(name)


def _having(param):
    return [n for n in PUBLIC if param in inspect.signature(getattr(jaxent, n)).parameters]


def test_each_kind_of_argument_is_exercised():
    assert _having("ignore_index") and _having("z_loss") and _having("where")


@pytest.mark.parametrize("name", _having("ignore_index"))
def test_numpy_integer_ignore_index_is_accepted_everywhere(name):
    rng = np.random.default_rng(12)
    labels = np.array([0, -100, 1])
    fn = getattr(jaxent, name)
    want = _call(name, labels=labels, ignore_index=-100)
    if callable(want):  # with_label_smoothing returns a loss
        return
    for v in (np.int64(-100), np.int32(-100), np.int16(-100)):
        got = _call(name, labels=labels, ignore_index=v)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{name} {v!r}")
    for bad in (True, -100.0, np.array(-100), "x"):
        with pytest.raises(TypeError, match="`ignore_index`"):
            _call(name, labels=labels, ignore_index=bad)
    del rng, fn


SCALARS = ["z_loss", "label_smoothing", "epsilon", "logit_softcap", "temperature"]


@pytest.mark.parametrize(
    "name,param", [(n, s) for s in SCALARS for n in _having(s) if n != "with_label_smoothing"]
)
def test_bool_hyperparameter_is_a_type_error_everywhere(name, param):
    for bad in (True, np.bool_(True)):
        with pytest.raises(TypeError, match=f"`{param}`"):
            _call(name, **{param: bad})


def _mask_shape(name):
    """A shape that a boolean ``where`` of ``name`` accepts (entries or rows)."""
    fn = getattr(jaxent, name)
    first = next(iter(inspect.signature(fn).parameters))
    x = _inputs(np.random.default_rng(0))[first]
    out = np.asarray(_call(name))
    for shape in (x.shape, x.shape[:-1], out.shape):
        try:
            _call(name, where=np.ones(shape, bool))
        except ValueError:
            continue
        return shape
    raise AssertionError(f"{name}: no boolean `where` shape accepted")


@pytest.mark.parametrize("name", _having("where"))
def test_non_boolean_where_is_a_type_error_everywhere(request, name):
    shape = _mask_shape(name)
    # a float mask (a weight?) and an integer mask (class indices?) are both rejected
    for bad in (np.ones(shape, np.float32), np.ones(shape, np.int32)):
        with pytest.raises(TypeError, match="`where`"):
            _call(name, where=bad)


# --------------------------------------------------------------------------- axis_name


def _vocab_parallel(name):
    fn = getattr(jaxent, name)
    rng = np.random.default_rng(3)
    pool = _inputs(rng)
    pool["logits_shard"] = pool["logits"]
    pool["weight_shard"] = pool["weight"]
    pool["labels"] = np.array([0, 3, 1])
    req = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.default is inspect.Parameter.empty and p.name != "axis_name"
    ]
    return fn, [pool[r] for r in req]


VP = [
    n
    for n in sorted(dir(jaxent))
    if inspect.isfunction(getattr(jaxent, n))
    and "axis_name" in inspect.signature(getattr(jaxent, n)).parameters
]


@pytest.mark.parametrize("name", VP)
@pytest.mark.parametrize(
    "axis_name, exc",
    [(None, ValueError), (3, TypeError), (["v"], TypeError), ("not_an_axis", ValueError)],
)
def test_wrong_axis_name_is_a_named_error(name, axis_name, exc):
    from jax.sharding import Mesh, PartitionSpec

    fn, args = _vocab_parallel(name)
    mesh = Mesh(np.array(jax.devices()[:1]), ("v",))
    specs = tuple(PartitionSpec() for _ in args)

    def body(*a):
        return fn(*a, axis_name=axis_name)

    f = jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=PartitionSpec())
    with pytest.raises(exc, match="`axis_name`"):
        f(*[jnp.asarray(a) for a in args])


def test_verify_rejects_a_zero_fd_step():
    with pytest.raises(ValueError, match="`fd_step`"):
        jaxent.verify("softmax_cross_entropy", fd_step=0)
    with pytest.raises(ValueError, match="`fd_step`"):
        jaxent.verify("softmax_cross_entropy", fd_step=-1e-3)
