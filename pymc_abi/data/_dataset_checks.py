"""Checks of a user's dataset(s): the container, the numbers, the shapes.

Each error names the variable (and the dataset, in a list) and says what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def split_datasets(observed, data, check: Callable) -> tuple[list[dict[str, np.ndarray]], bool]:
    """One dataset (a dict, or ``None`` for the model's own) or a list of them, each passed
    with its ``data`` through ``check(observed, data)``; also returns whether one was given."""
    single = observed is None or isinstance(observed, Mapping)
    if single:
        observed = [observed]
    elif isinstance(observed, str | bytes) or not isinstance(observed, Sequence):
        raise TypeError(
            "observed must be a dict mapping observed variables to data, a list of such "
            f"dicts, or None for the model's own data; got {type(observed).__name__}."
        )
    elif len(observed) == 0:
        raise ValueError("observed is an empty list: give at least one dataset.")
    elif any(o is None for o in observed):
        i = next(i for i, o in enumerate(observed) if o is None)
        raise TypeError(
            f"Dataset {i} of {len(observed)} is None: give a dict of variable names to "
            "arrays for every dataset (None means the model's own data only on its own)."
        )
    if data is None or isinstance(data, Mapping):
        data = [data] * len(observed)
    elif isinstance(data, str | bytes) or not isinstance(data, Sequence):
        raise TypeError(
            f"data must be a dict or a list of dicts, one per dataset; got {type(data).__name__}."
        )
    if len(data) != len(observed):
        raise ValueError(f"Got {len(observed)} observed datasets but {len(data)} sets of data.")
    datasets = []
    for i, (o, d) in enumerate(zip(observed, data)):
        try:
            datasets.append(check(o, d))
        except (TypeError, ValueError) as err:
            if single:
                raise
            raise type(err)(f"Dataset {i} of {len(observed)}: {err}") from err
    return datasets, single


def _by_dims(name: str, value, dims: tuple, coords: Mapping | None = None) -> object:
    """A labelled array (xarray, pandas) in the model's dim order, read by its labels.

    An ``xarray.DataArray`` whose dims are the variable's is transposed to the model's order
    (its values, not its position, decide); other dims are refused, as is a ``pandas``
    object whose axis names contradict the model's. A ``DataFrame``'s columns are put in the
    order of the model's coords of the second dim (``coords``) where they name them; named
    columns that are not those coords are refused. Anything else is returned as is.
    """
    value_dims = getattr(value, "dims", None)
    if isinstance(value_dims, tuple) and hasattr(value, "transpose"):  # xarray.DataArray
        if dims and None not in dims and set(value_dims) == set(dims):
            return value.transpose(*dims).values
        if dims and any(not str(d).startswith("dim_") for d in value_dims):
            raise ValueError(
                f"'{name}' is labelled with dims {value_dims}, but the model gives it dims "
                f"{dims}: rename its dims to the model's (DataArray.rename), or pass .values "
                "to read it by position."
            )
        return value.values
    if hasattr(value, "to_numpy") and hasattr(value, "index"):  # pandas
        label = getattr(value.index, "name", None)
        if dims and label is not None and dims[0] is not None and label != dims[0]:
            raise ValueError(
                f"'{name}' is a pandas object indexed by {label!r}, but the model's first dim "
                f"of '{name}' is {dims[0]!r}: rename the index, or pass .to_numpy() to read "
                "it by position."
            )
        columns = getattr(value, "columns", None)
        if columns is not None and len(dims) == 2:
            value = _by_columns(name, value, columns, (coords or {}).get(dims[1]), dims[1])
        return value.to_numpy()
    return value


def _by_columns(name: str, frame, columns, labels, dim):
    """A DataFrame with its columns in the order of the model's ``labels`` of ``dim``."""
    import pandas as pd  # only a user who passes a DataFrame has pandas

    if isinstance(columns, pd.RangeIndex) or labels is None:
        return frame  # no names to read, or none to read them by: by position
    labels = [str(label) for label in labels]
    names = [str(c) for c in columns]
    if sorted(names) != sorted(labels) or len(set(names)) != len(names):
        raise ValueError(
            f"'{name}' is a DataFrame with columns {names}, but the model's coords of its "
            f"dim {dim!r} are {labels}: name the columns by those coords (they are read "
            "by name), or pass .to_numpy() to read them by position."
        )
    frame = frame.set_axis(names, axis=1)
    return frame[labels]


def check_values(
    name: str, value, dtype: str | None, dims: tuple = (), coords: Mapping | None = None
) -> np.ndarray:
    """Numbers the networks can take: numeric, finite in float32, integers where due.

    Labelled arrays are read by their dims (``dims``, the model's dims of the variable, and
    ``coords``, the model's coords: a DataFrame's columns by name); a masked array with
    masked values is refused: the mask would be dropped silently.
    """
    if isinstance(value, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(value))
        if masked:
            raise ValueError(
                f"'{name}' is a masked array with {masked} masked value(s); the amortizer "
                "cannot condition on missing values, and reading the array would use the "
                "values under the mask. Drop or impute them before sampling."
            )
        value = value.data
    value = _by_dims(name, value, tuple(dims), coords)
    try:
        array = np.asarray(value)
    except Exception as err:  # ragged lists and the like
        raise TypeError(f"'{name}' cannot be read as an array: {err}") from err
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"'{name}' must hold numbers; got an array of dtype {array.dtype} "
            f"({type(value).__name__})."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"'{name}' holds NaN or inf; the amortizer cannot condition on missing values. "
            "Drop or impute them before sampling."
        )
    if np.any(np.abs(array) > _FLOAT32_MAX):
        raise ValueError(
            f"'{name}' holds values up to {np.abs(array).max():.3g}, beyond what float32 "
            f"(the networks' precision) represents ({_FLOAT32_MAX:.3g}); rescale the data "
            "and the model."
        )
    if dtype is not None and np.dtype(dtype).kind in "biu" and array.dtype.kind == "f":
        if np.any(array != np.round(array)):
            raise ValueError(
                f"'{name}' is a discrete variable ({dtype}) but holds non-integer values."
            )
        array = array.astype(dtype)  # whole numbers as floats (pandas): the model's integers
    return np.require(
        array, requirements="A"
    )  # PyTensor refuses unaligned arrays (Dask makes them)


def check_shape(name, value, expected, varying, bounds, lengths: dict) -> None:
    """The shape trained on; along a varying first dim, a length in ``bounds`` that agrees
    with the other variables on that dim (recorded in ``lengths``)."""
    if varying:
        lo, hi = bounds
        n = value.shape[0] if value.ndim else 0
        if value.ndim != len(expected) or value.shape[1:] != expected[1:]:
            wanted = str(("n", *expected[1:])).replace("'", "")
            raise ValueError(
                f"'{name}' has shape {value.shape}; the amortizer expects {wanted} with "
                f"n in [{lo}, {hi}]."
            )
        if not lo <= n <= hi:
            raise ValueError(
                f"'{name}' has {n} entries along dim '{varying}', outside the range "
                f"[{lo}, {hi}] the amortizer was trained on. Train on a range that "
                "includes it."
            )
        seen = lengths.setdefault(varying, (n, name))
        if seen[0] != n:
            raise ValueError(
                f"'{name}' has {n} entries along dim '{varying}', but '{seen[1]}' has {seen[0]}."
            )
    elif value.shape != expected:
        raise ValueError(
            f"'{name}' has shape {value.shape}, but the amortizer was trained on shape "
            f"{expected}. Give data of that shape, or train on varying sizes with "
            "dim_lengths=."
        )
