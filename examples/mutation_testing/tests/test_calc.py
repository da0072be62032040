"""The tests the gremlins are run against. They kill most of them, not all (see expected.tsv)."""

import pytest
from calc import add, clamp, discount, is_adult, mean, sign


def test_add():
    assert add(2, 3) == 5


def test_is_adult():
    assert is_adult(30)
    assert not is_adult(12)


def test_is_adult_boundary():
    assert is_adult(18)


def test_clamp_inside():
    assert clamp(5, 0, 10) == 5


def test_clamp_below():
    assert clamp(-3, 0, 10) == 0
    assert clamp(0, 0, 10) == 0


def test_clamp_above():
    assert clamp(42, 0, 10) == 10


def test_mean():
    assert mean([1, 2, 3, 6]) == 3


def test_discount():
    assert discount(80.0, 25) == 60.0


def test_discount_rejects_bad_percent():
    with pytest.raises(ValueError):
        discount(10.0, 150)


def test_sign():
    assert sign(7) == 1
    assert sign(0) == 0
