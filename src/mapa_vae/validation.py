"""Input checks shared by every public entry point: errors name the offending argument."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.utils import check_array


def as_data(X, name: str = "X", n_features: int | None = None, min_samples: int = 1,
            owner: str = "the model") -> np.ndarray:
    """``X`` as a finite float64 array of shape ``(n_samples, n_features)``.

    Accepts array-likes and tensors. Raises ``ValueError`` naming ``name`` on NaN or inf, on a
    wrong number of dimensions or columns, or on fewer than ``min_samples`` rows.
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    try:
        X = check_array(X, dtype=np.float64, ensure_min_samples=min_samples,
                        input_name=name, copy=False)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features, but {owner} is expecting "
                         f"{n_features} features as input")
    return X


def check_positive_int(value, name: str) -> int:
    """A positive integer, or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_non_negative_int(value, name: str) -> int:
    """A non-negative integer, or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)
