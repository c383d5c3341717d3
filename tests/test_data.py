"""Real data: reading files and named sets, preparing rows to train on and to score, errors."""
import gzip
import math

import numpy as np
import pytest

from mapa_vae import data
from mapa_vae.data import Preparation, prepare, read


def _idx(path, array, gz=True):
    """Write ``array`` as an IDX file (big-endian), gzipped or not."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float64): 0x0E}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(payload)
    return str(path)


@pytest.fixture
def images(tmp_path):
    """A small uint8 image set (30 images of 4 × 5) in every file kind that holds arrays."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(30, 4, 5), dtype=np.uint8)
    np.save(tmp_path / "im.npy", arr)
    np.savez(tmp_path / "im.npz", images=arr)
    _idx(tmp_path / "im-idx3-ubyte.gz", arr)
    _idx(tmp_path / "im-idx3-ubyte", arr, gz=False)
    return arr, tmp_path


@pytest.mark.parametrize("name", ["im.npy", "im.npz", "im.npz:images", "im-idx3-ubyte.gz",
                                  "im-idx3-ubyte"])
def test_every_file_kind_reads_the_same_images(images, name):
    arr, folder = images
    source = read(str(folder / name))
    np.testing.assert_array_equal(source.values, arr.reshape(30, 20))
    assert source.image_shape == (4, 5) and source.levels == 256


def test_csv_and_tsv_with_and_without_a_header(tmp_path):
    table = np.random.default_rng(1).normal(size=(6, 3))
    np.savetxt(tmp_path / "a.csv", table, delimiter=",")
    np.savetxt(tmp_path / "b.csv", table, delimiter=",", header="x,y,z", comments="")
    np.savetxt(tmp_path / "c.tsv", table, delimiter="\t", header="x\ty\tz", comments="")
    for name in ("a.csv", "b.csv", "c.tsv"):
        source = read(str(tmp_path / name))
        np.testing.assert_allclose(source.values, table, rtol=1e-15)
        assert source.image_shape is None and source.levels is None


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("a,b\n", "has a header but no rows"),
    ("1,2\n3,x\n", "a cell that is not a number: could not convert string 'x'"),
    ("1,2\nnan,4\n", "NaN at row 2, column 1"),
    ("1,2\n3,inf\n", "an infinite value at row 2, column 2"),
])
def test_bad_text_files_are_refused_naming_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError) as error:
        read(str(path))
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_sources_are_refused_naming_the_problem(tmp_path, images):
    _, folder = images
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 2)), b=np.ones((3, 2)))
    (tmp_path / "x.json").write_text("{}")
    (tmp_path / "junk-ubyte").write_bytes(b"\x01\x02\x03\x04")
    cut = gzip.compress(gzip.decompress((folder / "im-idx3-ubyte.gz").read_bytes())[:-7])
    (tmp_path / "cut-ubyte.gz").write_bytes(cut)
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    cases = {str(tmp_path / "two.npz"): "holds 2 arrays (a, b); name one as two.npz:KEY",
             str(tmp_path / "two.npz") + ":c": "holds no array 'c' (it holds a, b)",
             str(tmp_path / "missing.npy"): "no such file",
             str(tmp_path / "x.json"): "unknown kind of file",
             str(tmp_path / "junk-ubyte"): "not an IDX file",
             str(tmp_path / "cut-ubyte.gz"): "where its header announces (30, 4, 5)",
             str(tmp_path / "text.npy"): "not numbers",
             str(tmp_path): "a folder, not a data file"}
    for source, message in cases.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read(source)


def test_a_table_is_standardised_on_its_training_rows_and_scored_in_its_own_units(tmp_path):
    rng = np.random.default_rng(2)
    table = rng.normal(loc=[0, 100], scale=[1, 50], size=(40, 2))
    np.save(tmp_path / "t.npy", table)
    prepared = prepare(str(tmp_path / "t.npy"), test_fraction=0.25, seed=3)
    assert prepared.train.shape == (30, 2) and prepared.test.shape == (10, 2)
    np.testing.assert_allclose(prepared.train.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(prepared.train.std(0), 1, rtol=1e-12)
    scale = np.asarray(prepared.preparation.scale)
    assert prepared.preparation.log_jacobian() == pytest.approx(-np.log(scale).sum(), rel=1e-15)
    # the split is the seed's: the same seed splits alike, another otherwise
    again = prepare(str(tmp_path / "t.npy"), test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again.test, prepared.test)
    assert not np.array_equal(prepare(str(tmp_path / "t.npy"), test_fraction=0.25,
                                      seed=4).test, prepared.test)
    raw = prepare(str(tmp_path / "t.npy"), test_fraction=0.25, seed=3, standardize=False)
    assert raw.preparation.log_jacobian() == 0.0
    np.testing.assert_array_equal(np.sort(np.concatenate([raw.train, raw.test]), axis=0),
                                  np.sort(table, axis=0))


def test_image_levels_are_dequantised_or_read_as_probabilities_and_test_rows_binarised(images):
    arr, folder = images
    rows = arr.reshape(30, 20).astype(float)
    source = str(folder / "im.npy")
    gaussian = prepare(source, "gaussian", test=source, seed=5)
    assert np.all(np.floor(gaussian.train * 256) == rows)  # x = (v + u) / 256, u in [0, 1)
    assert not np.allclose(gaussian.train * 256, rows)
    bernoulli = prepare(source, "bernoulli", test=source, n_test=12, seed=5)
    np.testing.assert_array_equal(bernoulli.train, rows / 255)
    assert bernoulli.test.shape == (12, 20) and set(np.unique(bernoulli.test)) <= {0.0, 1.0}
    # a fixed binarisation: any seed of the run scores the same binary rows
    np.testing.assert_array_equal(prepare(source, "bernoulli", test=source, n_test=12,
                                          seed=6).test, bernoulli.test)
    prep = bernoulli.preparation
    assert prep.bits_per_dim(-10.0) == pytest.approx(10 / (20 * math.log(2)))
    assert gaussian.preparation.bits_per_dim(-10.0) == pytest.approx(
        (10 + 20 * math.log(256)) / (20 * math.log(2)))
    binary = (rows > 127).astype(float)
    np.testing.assert_array_equal(Preparation("bernoulli", 20).rows(binary, 0, score=True), binary)


def test_test_data_and_bernoulli_ranges_are_checked(tmp_path, images):
    _, folder = images
    np.save(tmp_path / "wide.npy", np.zeros((5, 21), dtype=np.uint8))
    np.save(tmp_path / "floats.npy", np.zeros((5, 20)))
    np.save(tmp_path / "big.npy", np.full((5, 3), 2.0))
    np.save(tmp_path / "one.npy", np.zeros((1, 3)))
    source = str(folder / "im.npy")
    with pytest.raises(ValueError, match="test rows of 21 values, but the training rows"):
        prepare(source, test=str(tmp_path / "wide.npy"))
    with pytest.raises(ValueError, match="holds values as given, but the training rows"):
        prepare(source, test=str(tmp_path / "floats.npy"))
    with pytest.raises(ValueError, match=r"the Bernoulli likelihood takes values in \[0, 1\]"):
        prepare(str(tmp_path / "big.npy"), "bernoulli", test=str(tmp_path / "big.npy"))
    with pytest.raises(ValueError, match="has 1 row; training needs at least 2"):
        prepare(str(tmp_path / "one.npy"), test=str(tmp_path / "big.npy"))
    with pytest.raises(ValueError, match="too few to hold out"):
        prepare(str(tmp_path / "big.npy"))
    with pytest.raises(ValueError, match="rows of 3 values, but the model was trained on rows of 20"):
        prepare(source, test=source).preparation.rows(np.zeros((2, 3)), 0)


def test_fashion_mnist_comes_from_its_idx_files_with_its_own_test_split(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    train = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    _idx(tmp_path / data.FASHION_MNIST_FILES["train"], train)
    _idx(tmp_path / data.FASHION_MNIST_FILES["test"], test)
    monkeypatch.setenv("MAPA_VAE_FASHION_MNIST", str(tmp_path))
    prepared = prepare("fashion-mnist", "bernoulli")
    np.testing.assert_array_equal(prepared.train, train.reshape(12, 784) / 255)
    assert prepared.test.shape == (5, 784) and prepared.image_shape == (28, 28)
    assert prepared.test_source == "fashion-mnist (its test split)"
    monkeypatch.setenv("MAPA_VAE_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        read("fashion-mnist")


def test_scikit_learns_bundled_sets_by_name():
    digits = read("digits")
    assert digits.values.shape == (1797, 64) and digits.levels == 17
    assert digits.image_shape == (8, 8)
    wine = prepare("wine", seed=0)
    assert wine.train.shape[1] == 13 and wine.preparation.mean is not None
    assert read("breast-cancer").values.shape == (569, 30)
    diabetes = read("diabetes")
    assert diabetes.values.shape == (442, 10) and diabetes.levels is None
