"""The C row-wise argmax (kernels/argmax.py) against torch.argmax: ties, NaN, lengths around the
vector width, strided rows, and a real logits shape."""

from __future__ import annotations

import pytest
import torch

from kernels import _cc, argmax

needs_cc = pytest.mark.skipif(_cc.compiler() is None, reason="no C compiler (cc or gcc) on PATH, or not Linux")


@needs_cc
@pytest.mark.parametrize("cols", [1, 7, 16, 17, 31, 33, 1000, 49152])
def test_matches_torch_argmax(cols):
    g = torch.Generator().manual_seed(cols)
    x = torch.randn(9, cols, generator=g)
    assert torch.equal(argmax.argmax_rows(x), argmax.argmax_rows_ref(x))


@needs_cc
def test_ties_give_the_first_index_and_nan_wins_like_torch():
    x = torch.zeros(6, 100)
    x[0, [5, 37, 90]] = 3.0  # tie: first index, in different vector lanes
    x[1, [40, 24]] = 2.0  # tie across lanes where the later lane comes first in memory
    x[2, 99] = float("inf")
    x[3, [10, 60]] = float("nan")  # the first NaN, though numbers are larger elsewhere
    x[3, 5] = 1e30
    x[4] = float("-inf")
    x[5, 98] = float("nan")  # in the scalar tail
    got = argmax.argmax_rows(x)
    assert got.tolist() == argmax.argmax_rows_ref(x).tolist() == [5, 24, 99, 10, 0, 98]


@needs_cc
def test_strided_rows_and_other_dtypes():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(8, 300, generator=g)
    view = base[::2, :250]  # row stride 600, not contiguous
    assert torch.equal(argmax.argmax_rows(view), view.argmax(-1))
    bf = base.bfloat16()  # not float32: the reference runs
    assert torch.equal(argmax.argmax_rows(bf), bf.argmax(-1))
