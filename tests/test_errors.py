"""The package's errors and warnings, by type: each is also the plain type it refines."""

import inspect
import warnings

import pytest

import pymc_abi as abi
from pymc_abi.core import errors


def test_every_error_is_a_package_error_and_a_value_error():
    found = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
    ]
    error_types = [c for c in found if issubclass(c, BaseException) and not issubclass(c, Warning)]
    warning_types = [c for c in found if issubclass(c, Warning)]
    assert len(error_types) >= 6 and len(warning_types) >= 8
    for cls in error_types:
        assert issubclass(cls, abi.PymcAbiError), cls
        assert cls is abi.PymcAbiError or issubclass(cls, ValueError), cls
    for cls in warning_types:
        assert issubclass(cls, abi.PymcAbiWarning) and issubclass(cls, UserWarning), cls
    # every one of them is exported at the top level, under its own name
    for cls in found:
        assert getattr(abi, cls.__name__) is cls
        assert cls.__name__ in abi.__all__


def test_old_names_still_catch():
    from pymc_abi.data.hierarchy import NotHierarchical
    from pymc_abi.model.logp import NoDensityError

    assert NotHierarchical is abi.NotHierarchicalError
    assert NoDensityError is abi.NoDensityError


def test_a_warning_type_can_be_turned_into_an_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error", abi.UnreliablePosteriorWarning)
        with pytest.raises(abi.UnreliablePosteriorWarning):
            warnings.warn("k̂ = 1.2", abi.UnreliablePosteriorWarning, stacklevel=1)
        warnings.warn("other", abi.UnvectorizedWarning, stacklevel=1)  # not turned
