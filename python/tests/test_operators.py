"""Operators from Python: every kind's apply/adjoint are adjoint to each other; the vector kinds
are what they say."""

from __future__ import annotations

import numpy as np
import pytest

import diffpost

SHAPE = (1, 8, 8)


def every_operator():
    rng = np.random.default_rng(0)
    mask = (rng.random(12) < 0.5).astype(float)
    mask[0] = 1.0
    return [
        diffpost.Matrix(rng.standard_normal((5, 12))),
        diffpost.Mask(mask),
        diffpost.Identity(12),
        diffpost.Inpaint(SHAPE, 0.5, seed=3),
        diffpost.Box(SHAPE, 2, 2, 3, 4),
        diffpost.SuperRes(SHAPE, 2),
        diffpost.Blur(SHAPE, 5, 1.0),
        diffpost.MRI(SHAPE, 2.0, 2, seed=1),
        diffpost.Inpaint((3, 4, 4), 0.3),
    ]


@pytest.mark.parametrize("op", every_operator(), ids=lambda o: o.name)
def test_adjointness(op: diffpost.Operator) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, op.in_dim))
    y = rng.standard_normal((3, op.out_dim))
    ax = op.apply(x)
    aty = op.adjoint(y)
    assert ax.shape == (3, op.out_dim) and aty.shape == (3, op.in_dim)
    lhs = (ax * y).sum(1)
    rhs = (x * aty).sum(1)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)
    # One vector in, one vector out; the same as its row of the batch.
    np.testing.assert_allclose(op.apply(x[1]), ax[1], atol=1e-12)
    np.testing.assert_allclose(op.adjoint(y[1]), aty[1], atol=1e-12)
    assert op.norm() > 0


def test_vector_kinds() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 4))
    x = rng.standard_normal(4)
    np.testing.assert_allclose(diffpost.Matrix(a).apply(x), a @ x, atol=1e-12)
    m = diffpost.Mask(np.array([1.0, 0.0, 1.0, 0.0]))
    np.testing.assert_array_equal(m.apply(x), x[[0, 2]])
    np.testing.assert_array_equal(diffpost.Identity(4).apply(x), x)
    assert diffpost.SuperRes(SHAPE, 2).out_dim == 16
    assert diffpost.SuperRes(SHAPE, 2).image_shape == SHAPE


def test_operator_input_checks() -> None:
    op = diffpost.Matrix(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"x: expected shape \(3,\) or \(B, 3\), got \(4,\)"):
        op.apply(np.ones(4))
    with pytest.raises(ValueError, match=r"y: expected shape \(2,\) or \(B, 2\), got \(1, 2, 2\)"):
        op.adjoint(np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="x: non-finite"):
        op.apply(np.array([1.0, np.inf, 0.0]))
    with pytest.raises(ValueError, match=r"A: expected a matrix of shape \(m, d\)"):
        diffpost.Matrix(np.ones(3))
    with pytest.raises(ValueError, match="mask"):
        diffpost.Mask(np.array([0.0, 0.5]))
    with pytest.raises(ValueError, match="factor"):
        diffpost.SuperRes(SHAPE, 3)
    with pytest.raises(ValueError):
        diffpost.Blur(SHAPE, 4, 1.0)  # even kernel
    with pytest.raises(ValueError):
        diffpost.Inpaint(SHAPE, 1.5)
    with pytest.raises(ValueError, match="d: must be >= 1"):
        diffpost.Identity(0)
