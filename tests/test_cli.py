"""Command line: the demo writes its results; errors write nothing."""
import json
import os

import pytest

from mapa_vae.cli import main


def test_demo_writes_summary_and_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--dataset", "spiral", "--n-train", "300", "--n-test", "20",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "spiral" and summary["n_train"] == 300
    assert summary["bandwidth"] == pytest.approx(2**0.5 * 0.05)
    assert summary["truncated_mass_max"] == 0.0
    assert set(summary["posterior_comparison"]) == {"mapa_vs_empirical", "mapa_vs_true",
                                                    "empirical_vs_true"}
    assert (out / "mapa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["mapa.png", "summary.json"]
    assert "mapa_vs_true" in capsys.readouterr().out


def test_demo_is_reproducible_from_its_seed(tmp_path):
    runs = []
    for name in ("a", "b"):
        main(["demo", "--dataset", "circle", "--n-train", "200", "--n-test", "10", "--seed", "5",
              "--estimate-bandwidth", "--n-neighbors", "50", "--out", str(tmp_path / name)])
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summary.pop("fit_seconds")
        runs.append(summary)
    assert runs[0] == runs[1]
    assert runs[0]["bandwidth_rule"] == "loo"


@pytest.mark.parametrize("argv, message", [
    (["demo", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["demo", "--dataset", "missing.py:truth"], "does not exist"),
    (["demo", "--n-train", "100", "--n-neighbors", "200"], "exceeds --n-train"),
    (["fit", "--method", "vae", "--effective-neighbours", "2", "--steps", "5"],
     "--effective-neighbours sets MAPA's kernel width; vae has no kernel"),
    (["fit", "--method", "iwae", "--code-learning-rate", "0.001", "--steps", "5"],
     "--code-learning-rate sets the rate of MAPA's codes; iwae has none"),
    (["fit", "--code-learning-rate", "-1", "--steps", "5"], "code_learning_rate must be"),
    (["fit", "--method", "vae", "--importance-samples", "2", "--steps", "5"],
     "--importance-samples sets the draws of MAPA's Gaussian codes; vae has none"),
    (["fit", "--importance-samples", "2", "--steps", "5"], "the atoms (codes='atoms'"),
    (["fit", "--method", "vae", "--code-tying", "1", "--steps", "5"],
     "--code-tying ties MAPA's Gaussian codes; vae has none"),
    (["fit", "--code-tying", "1", "--steps", "5"], "code_tying ties Gaussian codes"),
    (["fit", "--dataset", "linear-gaussian", "--code-tying", "-1", "--steps", "5"],
     "code_tying must be 'auto' or a non-negative number"),
    (["fit", "--train-kl", "1001", "--steps", "5"], "n_train_kl must be 0 (none) or from 2"),
    (["fit", "--method", "vae", "--code-freeze-at", "0.5", "--steps", "5"],
     "--code-freeze-at fixes MAPA's Gaussian codes; vae has none"),
    (["fit", "--dataset", "linear-gaussian", "--code-freeze-at", "1.5", "--steps", "5"],
     "code_freeze_at must be 'auto' or a share of the steps in [0, 1]"),
    (["bench", "--quick", "--quiet", "--train-kl", "-3"], "n_train_kl must be a non-negative"),
    (["fit", "--method", "vae", "--code-start", "ppca", "--steps", "5"],
     "--code-start sets where MAPA's Gaussian codes start; vae has none"),
    (["fit", "--method", "vae", "--code-mean-rate", "0.5", "--steps", "5"],
     "--code-mean-rate sets the steps of MAPA's Gaussian codes' means; vae has none"),
    (["fit", "--code-mean-rate", "0.5", "--steps", "5"],
     "code_mean_rate sets the steps of Gaussian codes' means; the atoms"),
    (["fit", "--dataset", "linear-gaussian", "--code-mean-rate", "-1", "--steps", "5"],
     "code_mean_rate must be a positive number, got -1.0"),
    (["fit", "--method", "iwae", "--code-smoothing", "2", "--steps", "5"],
     "--code-smoothing smooths the targets of MAPA's Gaussian codes; iwae has none"),
    (["fit", "--code-smoothing", "2", "--steps", "5"], "code_smoothing smooths the targets"),
    (["fit", "--dataset", "linear-gaussian", "--code-smoothing", "0.5", "--steps", "5"],
     "code_smoothing must be 'auto', None or a number of effective neighbours of at least 1"),
    (["fit", "--dataset", "linear-gaussian", "--code-smoothing", "2", "--importance-samples",
      "2", "--steps", "5"], "code_smoothing takes one draw per code"),
])
def test_errors_are_reported_and_nothing_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert main(argv + ["--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_argument_errors_exit_with_usage(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--n-train", "0", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", [["demo"], ["fit", "--steps", "5"],
                                     ["bench", "--quick", "--quiet"], ["figures"]])
def test_an_output_folder_under_a_file_is_refused_before_any_work(tmp_path, capsys, command):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert main(command + ["--out", str(afile / "sub")]) == 2
    err = capsys.readouterr().err
    assert err == (f"mapa-vae: error: cannot write --out {str(afile / 'sub')!r}: "
                   f"{str(afile)!r} is a file, not a folder\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_folder_in_a_read_only_folder_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["fit", "--steps", "5", "--out", str(locked / "fit")]) == 2
    assert f"the folder {str(locked)!r} is not writable" in capsys.readouterr().err


def test_a_dataset_file_that_fails_to_import_is_one_line(tmp_path, capsys):
    path = tmp_path / "typo.py"
    path.write_text("import torch\nx = GroundTruth(\n")
    assert main(["fit", "--dataset", f"{path}:x", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mapa-vae: error: ground-truth file {str(path)!r} failed to load: "
                          f"SyntaxError: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


FILE_TRUTHS = '''
import torch
from mapa_vae import GroundTruth

x = GroundTruth("normal", lambda z: torch.cat([z, 0.5 * z ** 2], 1), sigma=0.1)
nan = GroundTruth("normal", lambda z: torch.where(z < 2.5, z, torch.nan), sigma=0.1)
'''


def test_fit_names_a_file_dataset_by_its_object_and_reports_nan_from_f(tmp_path, capsys):
    path = tmp_path / "truths.py"
    path.write_text(FILE_TRUTHS)
    out = tmp_path / "fit"
    assert main(["fit", "--dataset", f"{path}:x", "--method", "vae", "--steps", "5",
                 "--n-train", "40", "--n-test", "20", "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["dataset"] == "x"
    assert capsys.readouterr().out.startswith("x, vae, seed 0:")
    assert main(["fit", "--dataset", f"{path}:nan", "--n-train", "2000", "--steps", "5",
                 "--quiet", "--out", str(tmp_path / "nan")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mapa-vae: error: f of the ground truth 'nan' from {str(path)!r} "
                          f"produced non-finite values (NaN or inf) for ")
    assert err.count("\n") == 1 and not (tmp_path / "nan").exists()


def test_fit_sets_the_mapa_kernel_width_by_effective_neighbours(tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(["fit", "--dataset", "circle", "--effective-neighbours", "3", "--steps", "5",
                 "--n-train", "200", "--n-test", "20", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["extra"] == {"effective_neighbours": 3.0}
    slow = tmp_path / "slow"
    assert main(["fit", "--dataset", "circle", "--code-learning-rate", "0.002", "--steps", "5",
                 "--n-train", "200", "--n-test", "20", "--quiet", "--out", str(slow)]) == 0
    config = json.loads((slow / "metrics.json").read_text())["config"]
    assert config["extra"] == {"code_learning_rate": 0.002}
    weighted = tmp_path / "weighted"  # d_z = 8: Gaussian codes, two draws each per step
    assert main(["fit", "--dataset", "linear-gaussian", "--importance-samples", "2", "--steps",
                 "5", "--n-train", "200", "--n-test", "5", "--code-mean-rate", "0.3", "--quiet",
                 "--out", str(weighted)]) == 0
    drawn = json.loads((weighted / "metrics.json").read_text())
    assert drawn["config"]["extra"] == {"importance_samples": 2, "code_mean_rate": 0.3}
    assert drawn["passes_per_step"] == 200
    atoms = tmp_path / "atoms"  # the codes' old start, asked for by name
    assert main(["fit", "--dataset", "linear-gaussian", "--code-start", "atoms", "--steps", "5",
                 "--n-train", "200", "--n-test", "5", "--quiet", "--out", str(atoms)]) == 0
    assert json.loads((atoms / "metrics.json").read_text())["config"]["extra"] == {
        "code_start": "atoms"}

    from mapa_vae import MAPAPosterior, datasets
    from mapa_vae.experiment import RunConfig, sample_data
    from mapa_vae.mapa_setup import residual_isotropy_pvalue

    # the test that PPCA is the data's model, recorded where the codes start at its posterior
    lg, _, _ = sample_data(RunConfig(dataset="linear-gaussian", n_train=200),
                           datasets.get("linear-gaussian"))
    assert drawn["ppca_isotropy_pvalue"] == residual_isotropy_pvalue(lg, 8)
    assert f"  PPCA is the model, p      {drawn['ppca_isotropy_pvalue']:.3g}\n" in \
        capsys.readouterr().out
    assert "ppca_isotropy_pvalue" not in json.loads((atoms / "metrics.json").read_text())
    assert "ppca_isotropy_pvalue" not in metrics

    X, _, _ = sample_data(RunConfig(dataset="circle", n_train=200), datasets.get("circle"))
    expected = MAPAPosterior(effective_neighbours=3.0).fit(X).bandwidth_
    assert metrics["bandwidth"] == expected
