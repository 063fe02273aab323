"""Re-coding after a selection: the linear `_recode` against `np.unique` (its reference)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mfstudy.data._interactions import _recode

_CODES = st.integers(1, 60).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n - 1), max_size=120))
)


@settings(max_examples=300, deadline=None)
@given(_CODES)
def test_recode_is_np_unique_with_inverse(args: tuple[int, list[int]]) -> None:
    n, codes = args
    a = np.array(codes, dtype=np.int32)
    kept, new = _recode(a, n)
    ref_kept, ref_new = np.unique(a, return_inverse=True)
    np.testing.assert_array_equal(kept, ref_kept)
    np.testing.assert_array_equal(new, ref_new)
    assert new.dtype == np.int32
