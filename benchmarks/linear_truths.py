"""Three ground truths outside the built-in ones, for checking MAPA's rule that keeps the codes at
the data's PPCA posterior where the data pass Bartlett's test that PPCA is their model
(``code_freeze_at="auto"``) on data it was not drawn from:

* ``lg4``: linear-Gaussian, ``x = A z + b + ε``, ``d_z = 4``, ``D = 32``, ``σ = 0.5``; ``A``'s
  singular values 3, 2.2, 1.6 and 1.2 (``p(x)`` in closed form);
* ``bent`` and ``curved``: the same map bent by a ``tanh``, ``x = c tanh(A z / c) + b + ε`` with
  ``c = 1.5`` and ``0.5`` (``p(x)`` by the one evaluator): not linear, yet 1000 points of either
  pass the test on most seeds (it reads only the covariance's spectrum).

Named by file, as any user's truths are (``A`` and ``b`` are fixed by their seed):

    python3 -m mapa_vae bench --datasets benchmarks/linear_truths.py:lg4 \\
        benchmarks/linear_truths.py:bent benchmarks/linear_truths.py:curved \\
        --methods mapa mapa-identity lagging iwae-10 --seeds 3 --n-test 1000 --eval-every 0 \\
        --jobs 2 --out bench-results/linear-truths

and MAPA with the codes learning until 0.75 of the steps whatever the test says:

    python3 -m mapa_vae fit --dataset benchmarks/linear_truths.py:lg4 --n-test 1000 --seed S \\
        --code-freeze-at 0.75
"""
import numpy as np
import torch

from mapa_vae.ground_truth import GroundTruth, LinearGaussian

_rng = np.random.default_rng(123)
_U, _ = np.linalg.qr(_rng.normal(size=(32, 4)))
_V, _ = np.linalg.qr(_rng.normal(size=(4, 4)))
A = _U @ np.diag([3.0, 2.2, 1.6, 1.2]) @ _V.T
b = 0.5 * _rng.normal(size=32)

lg4 = LinearGaussian(A, b, sigma=0.5, name="lg4")

_A, _b = torch.tensor(A, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
bent = GroundTruth("normal", lambda z: 1.5 * torch.tanh(z.to(_A.dtype) @ _A.T / 1.5) + _b,
                   sigma=0.5, latent_dim=4, name="bent")
curved = GroundTruth("normal", lambda z: 0.5 * torch.tanh(z.to(_A.dtype) @ _A.T / 0.5) + _b,
                     sigma=0.5, latent_dim=4, name="curved")
