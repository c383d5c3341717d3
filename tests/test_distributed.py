"""Devices and data-parallel training: a 2-process gloo run (torchrun, on the CPU) gives one
process's result; absent devices and a missing process group are clear errors."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mapa_vae import MAPADensity, VAEDensity, datasets
from mapa_vae.devices import resolve_device
from mapa_vae.distributed import Shard, batch_normal, noise_rows

FIT = ["--dataset", "circle", "--n-train", "200", "--n-test", "400", "--steps", "120",
       "--log-every", "20", "--quiet", "--seed", "3", "--dtype", "float64"]
# One process and two differ only in summation order: the shares' gradients are summed by the
# all-reduce, the whole batch's inside each matrix product. In float64 that is a relative
# difference of about 1e-16 per step (test_shares_sum_to_the_whole_batch_gradient bounds it);
# Adam's normalised steps carry it forward, amplified about 1e4-fold over 120 steps as measured
# in float32 (1e-7 relative at step 1, 2e-3 nats at the end), so about 1e-12 nats here. The
# tolerance leaves five orders of magnitude for machines whose kernels round differently.
TOLERANCE = 1e-6


def _fit(tmp_path, name, method, distributed):
    out = tmp_path / name
    cli = ["-m", "mapa_vae", "fit", "--method", method, "--out", str(out), *FIT]
    if distributed:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node=2", *cli, "--distributed"]
    else:
        command = [sys.executable, *cli]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "history.csv") as handle:
        objective = [float(row["objective"]) for row in csv.DictReader(handle)]
    return metrics, np.array(objective), result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mapa", "vae", "iwae", "lagging", "prior-is"])
def test_two_gloo_processes_give_one_process_result(tmp_path, method):
    one, one_curve, _ = _fit(tmp_path, "one", method, distributed=False)
    two, two_curve, stdout = _fit(tmp_path, "two", method, distributed=True)
    assert stdout.count("test KL") == 1  # rank 0 alone reports
    assert two["config"]["distributed"] and not one["config"]["distributed"]
    np.testing.assert_allclose(two_curve, one_curve, rtol=0, atol=TOLERANCE)
    for key in ("test_kl", "final_objective", "test_log_prob"):
        assert two[key] == pytest.approx(one[key], abs=TOLERANCE), key
    assert two["total_passes"] == one["total_passes"]  # passes as one process spends them


@pytest.mark.parametrize("method", ["mapa", "vae", "iwae", "lagging", "prior-is"])
def test_shares_sum_to_the_whole_batch_gradient(method):
    """The data-parallel step's arithmetic: each share's bound weighted by its rows, noise taken
    from the whole batch's, summed over shares, is the whole batch's gradient."""
    from mapa_vae.methods import make_estimator

    X, _ = datasets.get("circle").sample(200, seed=0)
    trainer = make_estimator(method, sigma=0.1, steps=5, random_state=0,
                             dtype="float64")._setup(X, 0)
    objective = trainer.objective
    x, idx = trainer.next_batch()
    grads = []
    for shares in (1, 3):
        objective.zero_grad()
        for rank in range(shares):
            rows = Shard(rank, shares).rows(100)
            torch.manual_seed(5)
            with noise_rows(rows, 100):
                estimate = objective(x[rows], idx[rows])
            (-estimate.value * (rows.stop - rows.start) / 100).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in objective.parameters()
                                if p.grad is not None]))
    scale = grads[0].abs().max()
    # float64 sums of at most 100 rows in another order: within 100 * 2^-53 of the summed
    # magnitudes, which stay within a few hundred times the largest gradient entry
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-10 * float(scale))


def test_shares_of_a_minibatch_cover_it_once():
    for world in (1, 2, 3, 7):
        rows = [Shard(rank, world).rows(100) for rank in range(world)]
        covered = np.concatenate([np.arange(100)[r] for r in rows])
        np.testing.assert_array_equal(covered, np.arange(100))
        assert max(r.stop - r.start for r in rows) - min(r.stop - r.start for r in rows) <= 1
    with pytest.raises(ValueError, match="cannot be shared by 4 ranks"):
        Shard(0, 4).rows(3)


def test_noise_of_a_share_is_its_rows_of_the_whole_batch_noise():
    torch.manual_seed(0)
    whole = torch.randn(5, 10, 2)
    pieces = []
    for rank in range(2):
        torch.manual_seed(0)
        rows = Shard(rank, 2).rows(10)
        with noise_rows(rows, 10):
            pieces.append(batch_normal((5, rows.stop - rows.start, 2), torch.float32, "cpu"))
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole)
    with noise_rows(slice(0, 5), 10), pytest.raises(RuntimeError, match="share is 5 rows"):
        batch_normal((1, 4, 2), torch.float32, "cpu")


def test_distributed_without_a_process_group_is_a_clear_error():
    X, _ = datasets.get("circle").sample(50, seed=0)
    with pytest.raises(ValueError, match="initialised process group"):
        MAPADensity(sigma=0.1, steps=5, distributed=True, random_state=0).fit(X)


def test_the_fit_command_outside_torchrun_names_the_launcher(tmp_path, capsys, monkeypatch):
    from mapa_vae.cli import main

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert main(["fit", "--distributed", "--steps", "5", "--out", str(tmp_path / "x")]) == 2
    assert "torchrun" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_an_absent_cuda_device_is_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="device 'cuda' was asked for"):
        resolve_device("cuda")
    X, _ = datasets.get("circle").sample(50, seed=0)
    with pytest.raises(ValueError, match="'cuda:1' was asked for"):
        VAEDensity(sigma=0.1, steps=5, device="cuda:1").fit(X)
    from mapa_vae.cli import main

    assert main(["fit", "--device", "cuda", "--steps", "5", "--out", str(tmp_path / "x")]) == 2
    assert "device 'cuda' was asked for" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unknown_device_names_are_refused():
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("gpu0")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_scores_like_the_cpu():
    X, _ = datasets.get("circle").sample(300, seed=0)
    cpu = MAPADensity(sigma=0.1, steps=100, random_state=0).fit(X)
    gpu = MAPADensity(sigma=0.1, steps=100, random_state=0, device="cuda").fit(X)
    np.testing.assert_allclose(gpu.score_samples(X[:50]), cpu.score_samples(X[:50]), atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gaussian_codes_start_and_score_like_the_cpu():
    """Above two latent dimensions (Gaussian codes from the data's PPCA posterior, scored by the
    one evaluator, which runs on the CPU in float64 wherever the model trained). The two devices
    draw different noise, so they are compared where it cannot act: two steps at rates of 1e-12,
    Adam moving each weight by at most about 2e-12 (the codes, here, not at all: these data pass
    the test that PPCA is their model, so they stay at its posterior). The decoder's means then
    differ by about 1e-10 and each log-density, a sum over 12 coordinates of (x - f) / σ² times
    that, by far less than 1e-6. A default fit on the device keeps its codes there."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 12)) + 0.3 * rng.normal(size=(200, 12))
    settings = dict(latent_dim=3, steps=2, batch_size=50, learning_rate=1e-12,
                    code_learning_rate=1e-12, dtype="float64", random_state=0)
    cpu = MAPADensity(**settings).fit(X)
    gpu = MAPADensity(device="cuda", **settings).fit(X)
    assert gpu.attachment_ == "ppca" and gpu.objective_.loc.device.type == "cuda"
    np.testing.assert_allclose(gpu.objective_.loc.detach().cpu().numpy(),
                               cpu.objective_.loc.detach().numpy(), atol=1e-9)
    np.testing.assert_allclose(gpu.score_samples(X[:10]), cpu.score_samples(X[:10]), atol=1e-6)
    trained = MAPADensity(latent_dim=3, steps=50, batch_size=50, device="cuda",
                          random_state=0).fit(X)
    assert trained.objective_.loc.device.type == "cuda"
    assert np.isfinite(trained.score_samples(X[:10])).all()
