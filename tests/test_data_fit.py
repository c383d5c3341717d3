"""Fitting real data from the command line: the model folder, scoring, sampling, MAPA's
posterior of new rows, and every bad input refused before any work."""
import csv
import gzip
import json

import numpy as np
import pytest
import torch

from mapa_vae import data_fit
from mapa_vae.cli import main

FAST = ["--steps", "30", "--batch-size", "50", "--hidden", "16", "--quiet"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A 3-column table on a curve, columns on very different scales, as .csv with a header."""
    folder = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    t = rng.uniform(-2, 2, size=300)
    X = np.stack([t, 100 * np.sin(t), 0.01 * t**2], 1) + rng.normal(scale=[0.1, 5, 0.002],
                                                                      size=(300, 3))
    np.savetxt(folder / "t.csv", X, delimiter=",", header="a,b,c", comments="")
    np.save(folder / "new.npy", X[:7])
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """120 uint8 images of 8 × 8 (a bright square at one of four places) as an IDX file."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 40, size=(120, 8, 8), dtype=np.uint8)
    for i, (r, c) in enumerate(rng.integers(0, 2, size=(120, 2)) * 4):
        arr[i, r:r + 4, c:c + 4] = 220
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (120, 8, 8))
    with gzip.open(folder / "im-idx3-ubyte.gz", "wb") as handle:
        handle.write(header + arr.tobytes())
    return folder


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def test_a_table_fits_scores_samples_and_answers_posteriors(table, tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(["fit", "--data", str(table / "t.csv"), "--latent-dim", "1", *FAST,
                 "--out", str(out)]) == 0
    m = _metrics(out)
    assert (m["n_train"], m["n_test"], m["latent_dim"], m["likelihood"]) == (270, 30, 1,
                                                                            "gaussian")
    for key in ("test_log_likelihood", "test_log_likelihood_se", "sigma", "passes_per_step",
                "setup_seconds", "seconds", "fit_wall_seconds"):
        assert np.isfinite(m[key])
    assert "test_bits_per_dim" not in m  # a table
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "metrics.json", "model.pt",
                                                     "test_scores.csv"]
    assert "test log-likelihood" in capsys.readouterr().out
    tested = list(csv.DictReader((out / "test_scores.csv").open()))  # row by row, for pairing
    assert [int(r["row"]) for r in tested] == list(range(1, 31))
    assert np.mean([float(r["log_prob"]) for r in tested]) == pytest.approx(
        m["test_log_likelihood"], rel=1e-12)
    # scored in the columns' own units: log p(x) = log p(z) − Σ log s_d
    model = data_fit.load(out)
    prep = model.preparation
    z = (np.load(table / "new.npy") - prep.mean) / prep.scale
    direct = model.estimator.score_samples(z) - np.log(prep.scale).sum()
    scores = tmp_path / "s.csv"
    assert main(["score", str(out), str(table / "new.npy"), "--out", str(scores)]) == 0
    rows = list(csv.DictReader(scores.open()))
    assert [int(r["row"]) for r in rows] == list(range(1, 8))
    np.testing.assert_allclose([float(r["log_prob"]) for r in rows], direct, rtol=1e-12)
    draws = tmp_path / "x.npy"
    assert main(["sample", str(out), "-n", "500", "--seed", "3", "--out", str(draws)]) == 0
    x = np.load(draws)
    assert x.shape == (500, 3) and abs(x[:, 1].std() - 70) < 40  # in the data's units
    post = tmp_path / "p.npz"
    assert main(["posterior", str(out), str(table / "new.npy"), "--top", "4",
                 "--out", str(post)]) == 0
    with np.load(post) as arrays:
        assert arrays["indices"].shape == arrays["weights"].shape == (7, 4)
        np.testing.assert_allclose(arrays["weights"].sum(1), 1.0)
        assert arrays["codes"].shape == (7, 4, 1) and arrays["mean"].shape == (7, 1)
        assert np.all(np.diff(arrays["weights"], axis=1) <= 0)  # largest first


def test_a_fit_is_reproducible_from_its_seed(table, tmp_path):
    runs = []
    for name in ("a", "b"):
        main(["fit", "--data", str(table / "t.csv"), "--latent-dim", "1", *FAST, "--seed", "4",
              "--out", str(tmp_path / name)])
        runs.append({k: v for k, v in _metrics(tmp_path / name).items()
                     if "seconds" not in k and k != "evaluator"})
    assert runs[0] == runs[1]


@pytest.mark.parametrize("method", ["mapa", "vae"])
def test_bernoulli_images_with_the_convolutional_decoder(images, tmp_path, method):
    out = tmp_path / method
    assert main(["fit", "--data", str(images / "im-idx3-ubyte.gz"), "--latent-dim", "3",
                 "--method", method, "--likelihood", "bernoulli", "--decoder", "conv",
                 "--evaluator-samples", "50", "--n-test", "5", *FAST, "--out", str(out)]) == 0
    m = _metrics(out)
    assert m["n_test"] == 5 and m["sigma"] is None and m["decoder"]["kind"] == "conv"
    assert m["test_log_likelihood"] < 0  # a probability of binary pixels
    assert m["test_bits_per_dim"] == pytest.approx(-m["test_log_likelihood"] / (64 * np.log(2)))
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = data_fit.load(out)  # the decoder rebuilt from the folder alone
    assert isinstance(model.estimator.model_.decoder, torch.nn.Module)
    draws = data_fit.sample(out, 20, seed=0)
    assert set(np.unique(draws)) <= {0.0, 1.0}
    means = data_fit.sample(out, 20, seed=0, means=True)
    assert means.min() >= 0 and means.max() <= 1


def _write_bad_inputs(folder):
    (folder / "text.csv").write_text("1,2\n3,oops\n")
    (folder / "nan.csv").write_text("1,2\nnan,4\n")
    (folder / "empty.csv").write_text("")
    np.save(folder / "one.npy", np.zeros((1, 2)))
    np.savez(folder / "two.npz", a=np.zeros((5, 2)), b=np.zeros((5, 2)))
    np.save(folder / "wide.npy", np.zeros((5, 3)))
    np.save(folder / "big.npy", np.full((30, 2), 3.0))
    np.save(folder / "ok.npy", np.random.default_rng(0).normal(size=(30, 2)))


@pytest.mark.parametrize("argv, message", [
    (["fit", "--data", "{d}/text.csv", "--latent-dim", "1"], "a cell that is not a number"),
    (["fit", "--data", "{d}/nan.csv", "--latent-dim", "1"], "NaN at row 2, column 1"),
    (["fit", "--data", "{d}/empty.csv", "--latent-dim", "1"], "is empty"),
    (["fit", "--data", "{d}/one.npy", "--latent-dim", "1", "--test-data", "{d}/ok.npy"],
     "has 1 row; training needs at least 2"),
    (["fit", "--data", "{d}/two.npz", "--latent-dim", "1"], "holds 2 arrays (a, b)"),
    (["fit", "--data", "{d}/ok.npy", "--latent-dim", "1", "--test-data", "{d}/wide.npy"],
     "test rows of 3 values, but the training rows"),
    (["fit", "--data", "{d}/big.npy", "--latent-dim", "1", "--likelihood", "bernoulli"],
     "the Bernoulli likelihood takes values in [0, 1]"),
    (["fit", "--data", "{d}/ok.npy"], "--data needs --latent-dim D"),
    (["fit", "--data", "{d}/ok.npy", "--latent-dim", "1", "--dataset", "circle"],
     "--dataset applies to ground truths, not to --data"),
    (["fit", "--data", "{d}/ok.npy", "--latent-dim", "1", "--twin"],
     "--twin applies to ground truths"),
    (["fit", "--latent-dim", "2"], "--latent-dim applies to real data (--data SOURCE)"),
    (["fit", "--data", "{d}/ok.npy", "--latent-dim", "1", "--test-data", "{d}/ok.npy",
      "--test-fraction", "0.2"], "give --test-data or --test-fraction, not both"),
    (["fit", "--data", "{d}/ok.npy", "--latent-dim", "1", "--decoder", "conv"],
     "the convolutional decoder draws images"),
    (["fit", "--data", "nowhere.npy", "--latent-dim", "1"], "nowhere.npy: no such file"),
])
def test_bad_input_stops_before_any_training_and_writes_nothing(tmp_path, capsys, argv, message):
    _write_bad_inputs(tmp_path)
    out = tmp_path / "never"
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    assert main(argv + ["--steps", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_a_folder_that_is_not_a_model_is_refused(tmp_path, capsys):
    _write_bad_inputs(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.pt").write_bytes(b"not a model")
    for folder, message in ((tmp_path / "empty", "not a model folder"),
                            (tmp_path / "junk", "not a mapa-vae model"),
                            (tmp_path / "none", "no such model folder")):
        assert main(["score", str(folder), str(tmp_path / "ok.npy")]) == 2
        assert message in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "empty"), "-n", "2", "--out",
                 str(tmp_path / "x.txt")]) == 2
    assert "must end in .npy" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()


def test_compare_fits_every_method_on_the_same_rows(images, tmp_path, capsys):
    out = tmp_path / "compare"
    assert main(["compare", "--data", str(images / "im-idx3-ubyte.gz"), "--latent-dim", "2",
                 "--methods", "mapa", "vae", "--steps", "20", "--hidden", "16", "--quiet",
                 "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [row["method"] for row in rows] == ["mapa", "vae"]
    assert len({(row["n_train"], row["n_test"], row["test_source"]) for row in rows}) == 1
    assert [row["passes_per_step"] for row in rows][1] == 200
    for name in ("results.csv", "summary.md", "compare.png", "samples.png"):
        assert (out / name).is_file()
    assert (out / "mapa" / "model.pt").is_file() and (out / "vae" / "model.pt").is_file()
    printed = capsys.readouterr().out
    assert "| mapa |" in printed and "| vae |" in printed
    # the VAE against MAPA row by row: the mean of the differences, and their standard error
    a, b = ([float(r["log_prob"]) for r in csv.DictReader((out / m / "test_scores.csv").open())]
            for m in ("mapa", "vae"))
    diff = np.subtract(b, a)
    paired = rows[1]["paired_difference"]
    assert paired["against"] == "mapa" and "paired_difference" not in rows[0]
    assert paired["mean"] == pytest.approx(rows[1]["test_log_likelihood"]
                                           - rows[0]["test_log_likelihood"], abs=1e-9)
    assert paired["se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(diff.size), rel=1e-9)
