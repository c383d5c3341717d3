"""Real data: a user's files and the data sets the project knows by name, as rows to train on
and rows to score.

A *source* is a file or a name:

* ``file.npy``: one array; ``file.npz``: the only array inside, or ``file.npz:key``;
  ``file.csv`` / ``file.tsv``: numbers separated by commas or tabs, with or without one header
  row; ``*-ubyte`` / ``*-ubyte.gz`` / ``*.idx``: an IDX file (the MNIST format), gzipped or not.
* ``digits`` (8 × 8 images, levels 0–16), ``wine`` (178 × 13), ``breast-cancer`` (569 × 30)
  and ``diabetes`` (442 × 10), shipped with scikit-learn; ``fashion-mnist`` (60 000 training
  and 10 000 test images of 28 × 28, levels 0–255) from the Debian package
  ``dataset-fashion-mnist``, whose official test split is its test set. Nothing is downloaded.

An array of more than two axes holds images: ``(N, H, W)`` becomes rows of ``H · W`` pixels.
An array of integers (a ``.npy``, ``.npz`` or IDX file of an integer type, and the named image
sets) holds *levels* ``v ∈ {0, …, L − 1}`` (``L = 256`` for 8-bit data, else one above the
largest value): under the Gaussian likelihood they are dequantised, ``x = (v + u) / L`` with
``u ~ U[0, 1)``, so that a density on ``[0, 1)^D`` is meaningful; under the Bernoulli
likelihood they are the probabilities ``v / (L − 1)`` of binary pixels. Other data are used as
given; tables can be standardised (each column by its training mean and deviation), and are by
default (:func:`prepare`).

Rows to *score* are prepared as training rows are, except that under the Bernoulli likelihood
rows that are not already binary are binarised once, ``x ~ Bernoulli(v)``, by a fixed seed
(:data:`SCORE_SEED`): every model is scored on the same binary rows. Their dequantisation noise
is drawn from the same fixed seed. A :class:`Preparation` records all of this, so that a saved
model prepares new rows exactly as its test rows were.

Every problem with a source is a ``ValueError`` of one line naming the file and the problem.
"""
from __future__ import annotations

import gzip
import math
import os
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .likelihood import check_likelihood

#: The Debian package's folder of Fashion-MNIST's IDX files (overridden by the environment
#: variable ``MAPA_VAE_FASHION_MNIST``).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}
#: The seed of the binarisation and dequantisation of rows to score.
SCORE_SEED = 0
NAMED = ("digits", "wine", "breast-cancer", "diabetes", "fashion-mnist")

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Source:
    """An array as read from a source, before preparation: ``values`` of shape ``(N, D)``,
    the ``image_shape`` of each row (``None`` for a table), ``levels`` when the values are
    integer levels ``0 … L − 1`` (``None`` otherwise), and, for a named set with an official
    test split, its ``test`` rows."""

    name: str
    values: np.ndarray
    image_shape: tuple | None = None
    levels: int | None = None
    test: np.ndarray | None = None


def is_named(source: str) -> bool:
    """Whether ``source`` names a data set the project knows (rather than a file)."""
    return source in NAMED


def read(source: str) -> Source:
    """The array behind a source (module docstring), checked: numbers only, finite, at least
    one row."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"a data source is a file or one of {', '.join(NAMED)}; got {source!r}")
    if is_named(source):
        return _named(source)
    path_text, key = _split_key(source)
    path = Path(path_text)
    if not path.exists():
        known = f" (or one of the named data sets: {', '.join(NAMED)})"
        raise ValueError(f"{path_text}: no such file{known}")
    if path.is_dir():
        raise ValueError(f"{path_text}: a folder, not a data file")
    suffix = _kind(path)
    if key is not None and suffix != "npz":
        raise ValueError(f"{source}: ':{key}' names an array inside a .npz file; "
                         f"{path.name} is not one")
    try:
        values = {"npy": _read_npy, "npz": lambda p: _read_npz(p, key), "csv": _read_text,
                  "tsv": _read_text, "idx": _read_idx}[suffix](path)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    return _as_source(path.name if key is None else f"{path.name}:{key}", values, source)


def _split_key(source: str) -> tuple[str, str | None]:
    """``file.npz:key`` → ``("file.npz", "key")``; anything else keeps its whole text."""
    head, sep, key = source.rpartition(":")
    if sep and head.lower().endswith(".npz"):
        return head, key
    return source, None


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".npy", ".npz", ".csv", ".tsv")):
        return name[-3:]
    if name.endswith(("-ubyte", "-ubyte.gz", ".idx", ".idx.gz")):
        return "idx"
    raise ValueError(f"{path}: unknown kind of file; give a .npy, .npz, .csv, .tsv or IDX "
                     f"(*-ubyte, *-ubyte.gz) file, or one of {', '.join(NAMED)}")


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:
        raise ValueError(f"not a readable .npy file ({_one_line(error)})") from None


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if key is None:
                if len(names) != 1:
                    raise ValueError(f"holds {len(names)} arrays ({', '.join(names) or 'none'}); "
                                     f"name one as {path.name}:KEY")
                key = names[0]
            elif key not in names:
                raise ValueError(f"holds no array {key!r} (it holds {', '.join(names)})")
            return archive[key]
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"not a readable .npz file ({_one_line(error)})") from None


def _read_text(path: Path) -> np.ndarray:
    """Numbers separated by commas (``.csv``) or tabs (``.tsv``); a first row that is not all
    numbers is a header."""
    delimiter = "," if path.name.lower().endswith(".csv") else "\t"
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        first = handle.readline()
    if not first.strip():
        raise ValueError("is empty")
    header = not _all_numbers(first.rstrip("\r\n").split(delimiter))
    try:
        with warnings.catch_warnings():  # a header without rows: said below, not warned
            warnings.simplefilter("ignore", UserWarning)
            values = np.loadtxt(path, delimiter=delimiter, skiprows=int(header), ndmin=2,
                                encoding="utf-8-sig", dtype=np.float64)
    except ValueError as error:
        raise ValueError(_text_error(error, header)) from None
    if values.size == 0:
        raise ValueError("has a header but no rows" if header else "is empty")
    return values


def _all_numbers(cells: list[str]) -> bool:
    try:
        [float(cell) for cell in cells]
    except ValueError:
        return False
    return True


def _text_error(error: ValueError, header: bool) -> str:
    """numpy's message, with its row counted as a line of the file (the header included)."""
    text = _one_line(error)
    if "could not convert string" in text:
        return f"a cell that is not a number: {text.split(': ', 1)[-1] if ': ' in text else text}" \
            + (" (rows counted after the header)" if header else "")
    return text


def _read_idx(path: Path) -> np.ndarray:
    """An IDX array: two zero bytes, a type code, the number of axes, each axis's length as a
    big-endian 32-bit integer, then the values, big-endian."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"not a readable IDX file ({_one_line(error)})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError("not an IDX file (its first bytes are not an IDX header)")
    axes = data[3]
    start = 4 + 4 * axes
    if axes == 0 or len(data) < start:
        raise ValueError("not an IDX file (its header is cut short)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(axes))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - start != expected:
        raise ValueError(f"holds {len(data) - start} bytes of values where its header "
                         f"announces {shape} of {dtype.itemsize} bytes ({expected})")
    return np.frombuffer(data, dtype=dtype, offset=start).reshape(shape).astype(dtype.newbyteorder("="))


def _as_source(name: str, values: np.ndarray, where: str) -> Source:
    """Rows, image shape and levels of an array read from ``where``."""
    values = np.asarray(values)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{where}: holds {values.dtype} values, not numbers")
    if values.ndim == 0 or values.shape[0] == 0 or values.size == 0:
        raise ValueError(f"{where}: is empty")
    if values.ndim == 1:
        values = values[:, None]
    image_shape = tuple(values.shape[1:]) if values.ndim > 2 else None
    levels = _levels(values, where)
    rows = values.reshape(values.shape[0], -1)
    if levels is None:
        _check_finite(rows, where)
    return Source(name, rows, image_shape, levels)


def _levels(values: np.ndarray, where: str) -> int | None:
    """``L`` for an integer array of levels ``0 … L − 1``: 256 for 8-bit data, else one above
    the largest value; ``None`` for other data."""
    if values.dtype.kind not in "biu":
        return None
    low = int(values.min())
    if low < 0:
        raise ValueError(f"{where}: integer values are read as levels from 0; the smallest is {low}")
    if values.dtype == np.uint8:
        return 256
    return int(values.max()) + 1


def _check_finite(rows: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(rows)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        what = "NaN" if np.isnan(rows[row, column]) else "an infinite value"
        raise ValueError(f"{where}: {what} at row {row + 1}, column {column + 1} "
                         f"({int(bad.sum())} cells in all are not finite)")


def _named(name: str) -> Source:
    if name == "fashion-mnist":
        folder = Path(os.environ.get("MAPA_VAE_FASHION_MNIST", FASHION_MNIST_DIR))
        files = {part: folder / file for part, file in FASHION_MNIST_FILES.items()}
        missing = [str(path) for path in files.values() if not path.is_file()]
        if missing:
            raise ValueError(f"fashion-mnist: {missing[0]} is missing; install the Debian package "
                             f"with: apt-get install dataset-fashion-mnist")
        try:
            train, test = (_read_idx(files[part]) for part in ("train", "test"))
        except ValueError as error:
            raise ValueError(f"fashion-mnist: {error}") from None
        source = _as_source(name, train, name)
        source.test = _as_source(name, test, name).values
        if source.test.shape[1] != source.values.shape[1]:
            raise ValueError(f"fashion-mnist: its test images have {source.test.shape[1]} pixels, "
                             f"its training images {source.values.shape[1]}")
        return source
    from sklearn import datasets as bundled

    if name == "digits":
        return Source(name, bundled.load_digits().data.astype(np.int64), (8, 8), 17)
    loader = {"wine": bundled.load_wine, "breast-cancer": bundled.load_breast_cancer,
              "diabetes": bundled.load_diabetes}[name]
    return Source(name, loader().data.astype(np.float64))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# --- preparation ------------------------------------------------------------------------------
@dataclass
class Preparation:
    """How raw rows become the rows a model sees (module docstring); JSON-able.

    ``likelihood``: "gaussian" or "bernoulli"; ``levels``: ``L`` of integer data (``None``:
    values as given); ``mean`` and ``scale``: per-column standardisation (``None``: none);
    ``image_shape``: each row's image shape, if any."""

    likelihood: str
    n_features: int
    levels: int | None = None
    mean: list | None = None
    scale: list | None = None
    image_shape: list | None = None

    def rows(self, raw: np.ndarray, seed, score: bool = False, name: str = "data") -> np.ndarray:
        """``raw`` rows prepared for training (``score=False``; dequantisation noise from
        ``seed``) or for scoring (binarised where needed; noise and draws from ``seed``)."""
        raw = np.asarray(raw)
        if raw.ndim > 2:
            raw = raw.reshape(raw.shape[0], -1)
        if raw.ndim != 2 or raw.shape[1] != self.n_features:
            width = raw.shape[1] if raw.ndim == 2 else 1
            raise ValueError(f"{name}: rows of {width} values, but the model was trained on rows "
                             f"of {self.n_features}")
        rng = np.random.default_rng(seed)
        if self.levels is not None:
            if raw.dtype.kind not in "biu" and not np.array_equal(raw, np.round(raw)):
                raise ValueError(f"{name}: the model was trained on integer levels 0 to "
                                 f"{self.levels - 1}; these rows hold other values")
            low, high = float(raw.min()), float(raw.max())
            if low < 0 or high > self.levels - 1:
                raise ValueError(f"{name}: levels from {low:g} to {high:g}, outside the 0 to "
                                 f"{self.levels - 1} the model was trained on")
            x = raw.astype(np.float64)
            if self.likelihood == "gaussian":
                x = (x + rng.random(x.shape)) / self.levels
            else:
                x = x / (self.levels - 1)
        else:
            x = raw.astype(np.float64)
            _check_finite(x, name)
            if self.mean is not None:
                x = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        if self.likelihood == "bernoulli":
            if self.levels is None:
                low, high = float(x.min()), float(x.max())
                if low < 0 or high > 1:
                    raise ValueError(f"{name}: the Bernoulli likelihood takes values in [0, 1] "
                                     f"(the probabilities of binary pixels); the data range "
                                     f"over [{low:.4g}, {high:.4g}]")
            if score and not np.isin(x, (0.0, 1.0)).all():
                x = (rng.random(x.shape) < x).astype(np.float64)
        return x

    def log_jacobian(self) -> float:
        """What turns ``log p`` of prepared rows into ``log p`` of the rows as given: ``−Σ_d log
        scale_d`` for standardised columns, else 0."""
        return 0.0 if self.scale is None else -float(np.sum(np.log(self.scale)))

    def bits_per_dim(self, log_p: float) -> float | None:
        """Bits per dimension of image data from ``log p`` of prepared rows, nats: for levels
        under the Gaussian, of the discrete images (``x = (v + u) / L``, so ``log P(v) ≥
        log p(x) − D log L``); for binary pixels, of the binary images; ``None`` for tables."""
        if self.image_shape is None:
            return None
        d = self.n_features
        discrete = log_p - (d * math.log(self.levels)
                            if self.levels is not None and self.likelihood == "gaussian" else 0.0)
        return -discrete / (d * math.log(2))


@dataclass
class Data:
    """Rows to train on and to score, prepared, with what prepared them.

    ``train``: ``(n_train, D)`` float64; ``test``: ``(n_test, D)`` rows to score;
    ``preparation``: :class:`Preparation`; ``test_source``: where the test rows came from."""

    name: str
    train: np.ndarray
    test: np.ndarray
    preparation: Preparation
    test_source: str
    info: dict = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple | None:
        shape = self.preparation.image_shape
        return None if shape is None else tuple(shape)

    def summary(self) -> dict:
        """What the metrics of a run record about its data."""
        return {"data": self.name, "n_train": int(self.train.shape[0]),
                "n_test": int(self.test.shape[0]), "n_features": int(self.train.shape[1]),
                "test_source": self.test_source, "preparation": asdict(self.preparation)}


def prepare(source: str, likelihood: str = "gaussian", test: str | None = None,
            test_fraction: float = 0.1, n_test: int | None = None, standardize: bool | None = None,
            seed: int = 0) -> Data:
    """Training and test rows from a source (module docstring).

    ``test``: a source of test rows; else a named set's official test split; else a seeded
    share ``test_fraction`` of the rows, held out. ``n_test``: score only the first this many
    test rows. ``standardize``: each column by the training rows' mean and deviation (``None``:
    for tables under the Gaussian likelihood, not for images or levels). ``seed``: the split and the training rows'
    dequantisation noise; rows to score are prepared by :data:`SCORE_SEED`."""
    likelihood = check_likelihood(likelihood)
    data = read(source)
    rows = data.values
    if test is not None:
        test_data = read(test)
        test_rows, test_source = test_data.values, test
        if test_rows.shape[1] != rows.shape[1]:
            raise ValueError(f"{test}: test rows of {test_rows.shape[1]} values, but the training "
                             f"rows ({source}) have {rows.shape[1]}")
        if (test_data.levels is None) != (data.levels is None):
            kinds = {True: "values as given", False: "integer levels"}
            raise ValueError(f"{test}: holds {kinds[test_data.levels is None]}, but the training "
                             f"rows ({source}) hold {kinds[data.levels is None]}")
    elif data.test is not None:
        test_rows, test_source = data.test, f"{source} (its test split)"
    else:
        if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
            raise ValueError(f"the test fraction must lie strictly between 0 and 1, got "
                             f"{test_fraction!r}")
        n_held = int(round(test_fraction * rows.shape[0]))
        if n_held < 2 or rows.shape[0] - n_held < 2:
            raise ValueError(f"{source}: {rows.shape[0]} rows are too few to hold out "
                             f"{test_fraction:g} of them for testing and train on the rest "
                             f"(each needs at least 2); give test data")
        order = np.random.default_rng([seed, 1]).permutation(rows.shape[0])
        test_rows, rows = rows[order[:n_held]], rows[order[n_held:]]
        test_source = f"{test_fraction:g} of {source}, held out by seed {seed}"
    if rows.shape[0] < 2:
        raise ValueError(f"{source}: has {rows.shape[0]} row; training needs at least 2")
    if n_test is not None:
        if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 2:
            raise ValueError(f"n_test must be an integer of at least 2, got {n_test!r}")
        test_rows = test_rows[:n_test]
    if test_rows.shape[0] < 2:
        raise ValueError(f"{test_source}: has {test_rows.shape[0]} row; scoring needs at least 2 "
                         f"for a standard error")
    table = data.image_shape is None and data.levels is None
    if standardize is None:
        standardize = table and likelihood == "gaussian"
    if standardize and data.levels is not None:
        raise ValueError(f"{source}: holds integer levels, which are dequantised or read as "
                         f"probabilities, not standardised")
    if standardize and likelihood == "bernoulli":
        raise ValueError("the Bernoulli likelihood reads values in [0, 1] as probabilities; "
                         "standardised columns are not")
    mean = scale = None
    if standardize:
        mean, scale = rows.mean(axis=0), rows.std(axis=0)
        if np.any(scale == 0):
            column = int(np.flatnonzero(scale == 0)[0])
            raise ValueError(f"{source}: column {column + 1} is constant in the training rows, "
                             f"so it cannot be standardised; leave standardisation off")
        mean, scale = mean.tolist(), scale.tolist()
    preparation = Preparation(likelihood, rows.shape[1], data.levels, mean, scale,
                              None if data.image_shape is None else list(data.image_shape))
    train = preparation.rows(rows, [seed, 2], name=source)
    scored = preparation.rows(test_rows, SCORE_SEED, score=True, name=test_source)
    return Data(data.name, train, scored, preparation, test_source)
