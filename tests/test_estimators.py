"""Estimators: scikit-learn conventions, the shared surface, learning, errors."""
import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from mapa_vae import datasets, test_kl
from mapa_vae.atoms import POSITION_RATE, stratified_atoms
from mapa_vae.estimators import (DiscretePosterior, GaussianPosterior, IWAEDensity,
                                 LaggingVAEDensity, MAPADensity, MixturePosterior, PriorISDensity,
                                 VAEDensity)
from mapa_vae.mapa_setup import probabilistic_pca_codes
from mapa_vae.methods import METHODS, make_estimator
from mapa_vae.objectives import GaussianCodesBound, MAPABound

SMALL = {"steps": 3, "batch_size": 10, "log_every": 1, "random_state": 0}
#: One method per estimator class.
ESTIMATORS = {m.family: m.estimator for m in METHODS.values()}


# scikit-learn generates the checks that apply to an unsupervised density estimator (no
# classifier, regressor or transformer checks). All run and pass except one, which scikit-learn
# itself skips: check_array_api_input runs only when SCIPY_ARRAY_API=1 is set before SciPy is
# imported (it checks that array-API dispatch leaves results unchanged); setting it would change
# SciPy's behaviour for the whole test session, so it is left to scikit-learn's default.
@parametrize_with_checks([cls(**SMALL) for cls in ESTIMATORS.values()])
def test_scikit_learn_conventions(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def circle():
    truth = datasets.get("circle")
    X, Z = truth.sample(300, seed=0)
    return truth, X, Z


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_every_method_answers_the_same_questions(method, circle):
    truth, X, _ = circle
    est = make_estimator(method, sigma=truth.sigma, steps=30, batch_size=50, log_every=10,
                         random_state=0).fit(X)
    scores = est.score_samples(X[:20])
    assert scores.shape == (20,) and np.isfinite(scores).all()
    assert est.score(X[:20]) == pytest.approx(scores.sum())
    samples = est.sample(15, random_state=1)
    assert samples.shape == (15, 2)
    np.testing.assert_array_equal(samples, est.sample(15, random_state=1))
    assert est.decode(np.zeros((4, 1))).shape == (4, 2)
    assert est.sigma_ == pytest.approx(truth.sigma)
    assert [row["step"] for row in est.history_] == [10, 20, 30]
    assert est.total_passes_ == est.history_[-1]["passes"]
    posterior = est.posterior(X[:5])
    if isinstance(posterior, GaussianPosterior):
        assert posterior.loc.shape == posterior.scale.shape == (5, 1)
        assert (posterior.scale > 0).all()
    else:
        np.testing.assert_allclose(np.asarray(posterior.weights.sum(axis=1)).ravel(), 1.0)
        assert posterior.mean().shape == (5, 1)


def test_prior_proposal_posterior_matches_the_linear_gaussian_closed_form():
    """For f(z) = w z + b and z ~ N(0, 1): p(z | x) = N(v wᵀ(x − b)/σ², v), v = 1/(1 + ‖w‖²/σ²)."""
    decoder = torch.nn.Linear(1, 2)
    X = np.random.default_rng(0).normal(size=(50, 2))
    est = PriorISDensity(decoder=decoder, sigma=0.5, steps=1, n_samples=200_000,
                         random_state=0).fit(X)
    w = est.model_.decoder.weight.detach().double().numpy()[:, 0]
    b = est.model_.decoder.bias.detach().double().numpy()
    x = np.array([[0.3, -0.2], [1.0, 0.5], [-0.4, 0.8]])
    v = 1.0 / (1.0 + w @ w / 0.25)
    expected = v * (x - b) @ w / 0.25
    post = est.posterior(x, random_state=1)
    assert post.weights.shape == (3, 200_000)
    np.testing.assert_allclose(post.mean()[:, 0], expected, atol=0.01)
    np.testing.assert_array_equal(post.weights, est.posterior(x, random_state=1).weights)


def test_mapa_posterior_is_a_mixture_of_the_learned_gaussian_codes(circle):
    truth, X, _ = circle
    est = MAPADensity(sigma=truth.sigma, steps=20, codes="gaussian", random_state=0).fit(X)
    post = est.posterior(X[:7])
    assert isinstance(post, MixturePosterior)
    assert post.weights.shape == (7, 300) and post.loc.shape == post.scale.shape == (300, 1)
    np.testing.assert_allclose(np.asarray(post.weights.sum(axis=1)).ravel(), 1.0)
    np.testing.assert_allclose(post.mean(), post.weights @ post.loc)
    assert (post.scale > 0).all()
    # trained with the identity, the codes differ; the query still answers with MAPA's weights
    ablation = make_estimator("mapa-identity", codes="gaussian", sigma=truth.sigma, steps=20,
                              random_state=0).fit(X)
    assert ablation.weights == "identity"
    assert (ablation.posterior(X[:7]).weights != post.weights).nnz == 0
    assert not np.array_equal(ablation.posterior(X[:7]).loc, post.loc)


def test_importance_weighted_codes_take_k_decoder_passes_per_index(circle):
    truth, X, _ = circle
    est = MAPADensity(sigma=truth.sigma, steps=10, batch_size=50, codes="gaussian",
                      importance_samples=3, random_state=0).fit(X)
    assert est.objective_.n_samples == 3 and est.passes_per_step_ == 150
    assert np.isfinite(est.history_[-1]["bound_full"])


def test_tied_codes_train_free_until_half_way_then_tied_to_their_neighbours(circle):
    truth, X, _ = circle
    settings = dict(sigma=truth.sigma, steps=8, batch_size=50, codes="gaussian", log_every=1,
                    random_state=0)
    free = MAPADensity(**settings).fit(X)
    tied = MAPADensity(code_tying=3.0, **settings).fit(X)
    neighbours = tied.objective_.neighbours.numpy()
    assert neighbours.shape == (len(X), 5) and free.objective_.neighbours is None
    assert not (neighbours == np.arange(len(X))[:, None]).any()
    objective = [[row["objective"] for row in est.history_] for est in (free, tied)]
    assert objective[0][:4] == objective[1][:4]  # steps 1-4: the same draws, no penalty
    assert all(a != b for a, b in zip(objective[0][4:], objective[1][4:]))
    assert tied.objective_.tie_strength == 3.0 and tied.passes_per_step_ == 50


def test_frozen_codes_stop_where_they_were_and_the_decoder_trains_on(circle):
    truth, X, _ = circle
    settings = dict(sigma=truth.sigma, batch_size=50, codes="gaussian", log_every=1,
                    lr_schedule="constant", random_state=0)
    first_half = MAPADensity(steps=4, **settings).fit(X)
    free = MAPADensity(steps=8, **settings).fit(X)
    frozen = MAPADensity(steps=8, code_freeze_at=0.5, **settings).fit(X)
    objective = [[row["objective"] for row in est.history_] for est in (free, frozen)]
    # steps 1-5 give the same bounds (step 5's, before its update, the codes after step 4);
    # after it the free codes move on and the frozen ones do not
    assert objective[0][:5] == objective[1][:5] and objective[0][5:] != objective[1][5:]
    for name in ("loc", "log_scale"):  # a constant rate: the first four steps of either run
        np.testing.assert_array_equal(getattr(frozen.objective_, name).detach().numpy(),
                                      getattr(first_half.objective_, name).detach().numpy())
        assert not getattr(frozen.objective_, name).requires_grad
    decoders = [dict(est.model_.decoder.named_parameters()) for est in (first_half, frozen)]
    assert any(not torch.equal(decoders[0][k], decoders[1][k]) for k in decoders[0])
    assert frozen.passes_per_step_ == 50
    assert free.objective_.loc.requires_grad  # at two latent dimensions "auto" freezes nothing


def test_codes_learn_from_smoother_targets_from_half_way_until_fixed(circle):
    truth, X, _ = circle
    # 300 points in batches of 50: the second epoch's steps 6-11 revisit codes that have
    # moments in Adam (a code's first update depends only on its gradient's signs)
    settings = dict(sigma=truth.sigma, steps=16, batch_size=50, codes="gaussian", log_every=1,
                    effective_neighbours=1.1, code_freeze_at=0.75, random_state=0)
    plain = MAPADensity(code_smoothing=None, **settings).fit(X)
    smoothed = MAPADensity(code_smoothing=2.0, **settings).fit(X)
    assert plain.objective_.code_mass is None and smoothed.objective_.code_mass is not None
    objective = [[row["objective"] for row in est.history_] for est in (plain, smoothed)]
    # steps 1-9 give the same values (step 9's, before its update, from the same parameters);
    # from step 9 on the codes follow the smoother targets, so later values differ
    assert objective[0][:9] == objective[1][:9] and objective[0][9:] != objective[1][9:]
    # a second decoder pass per index at 0-based steps 8-11, none once the codes are fixed
    assert plain.passes_per_step_ == 50 and smoothed.passes_per_step_ == 50 * 20 / 16
    # a smoothing the training weights already give acts not at all: the same run, bit for bit
    same = MAPADensity(code_smoothing=1.05, **settings).fit(X)
    assert same.objective_.code_mass is None
    assert [row["objective"] for row in same.history_] == objective[0]


def test_code_smoothing_resolves_auto_where_codes_are_gaussian_with_mapa_weights():
    assert MAPADensity(latent_dim=3)._code_smoothing() == 1.25
    for settings in (dict(latent_dim=2, codes="gaussian"), dict(latent_dim=3, codes="atoms"),
                     dict(latent_dim=3, weights="identity"),
                     dict(latent_dim=3, importance_samples=2)):
        assert MAPADensity(**settings)._code_smoothing() is None
    assert MAPADensity(latent_dim=3, weights="identity", code_smoothing=2)._code_smoothing() == 2


@pytest.mark.parametrize("prior", ["normal", "uniform"])
def test_codes_are_tied_and_fixed_late_by_default_only_where_they_are_gaussian_by_default(
        prior):
    X = np.random.default_rng(0).normal(size=(60, 5))
    settings = dict(steps=4, batch_size=20, random_state=0, prior=prior)
    above = MAPADensity(latent_dim=3, **settings).fit(X)
    assert above.objective_.tie_strength == 1.0 and above.objective_.neighbours is not None
    assert not above.objective_.loc.requires_grad  # fixed from step 3 of 4
    assert np.isfinite(above.score_samples(X[:3])).all()
    atoms = MAPADensity(latent_dim=3, codes="atoms", **settings).fit(X)
    assert isinstance(atoms.objective_, MAPABound)
    two = MAPADensity(latent_dim=2, codes="gaussian", **settings).fit(X)
    assert two.objective_.tie_strength == 0.0 and two.objective_.neighbours is None
    assert two.objective_.loc.requires_grad


def test_atoms_and_targets_are_kept_in_the_trainings_dtype():
    """With ``dtype="float64"`` the atoms and MAPA's targets ``x̄_n = Σ_i W_in x_i / m_n`` are
    built in float64, not rounded to float32 first: they equal NumPy's float64 values to a few
    units in the last place (rtol 1e-14) before training moves anything (one step at rate 1e-12
    moves no buffer)."""
    X, _ = datasets.get("circle").sample(120, seed=0)
    est = MAPADensity(sigma=0.1, steps=1, learning_rate=1e-12, dtype="float64",
                      random_state=0).fit(X)
    objective = est.objective_
    assert objective.xbar.dtype == objective.attachment.atoms.dtype == torch.float64
    W = objective.weights
    mass = np.asarray(W.sum(axis=0)).ravel()
    np.testing.assert_allclose(objective.mass.numpy(), mass, rtol=1e-14)
    np.testing.assert_allclose(objective.xbar.numpy(), (W.T @ X) / mass[:, None], rtol=1e-14,
                               atol=1e-15)
    atoms = stratified_atoms(est.model_.prior, X.shape[0])
    np.testing.assert_array_equal(np.sort(objective.attachment.atoms.numpy(), axis=0),
                                  np.sort(atoms, axis=0))


def test_gaussian_codes_start_at_the_datas_probabilistic_pca_posterior_by_default():
    """Above two latent dimensions, under the normal prior and with ``init="auto"``, the codes
    start at :func:`~mapa_vae.mapa_setup.probabilistic_pca_codes` (no attachment is computed).
    The codes are built in the training's float64 (the widths stored as logs: ``exp ∘ log`` is
    exact to a few units in the last place, rtol 1e-14), and one step at a code rate of 1e-12
    moves a code by at most about that (Adam's step is at most about its rate; atol 1e-10)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3)) @ rng.normal(size=(3, 6)) + 0.3 * rng.normal(size=(80, 6))
    settings = dict(latent_dim=3, steps=1, batch_size=20, code_learning_rate=1e-12,
                    dtype="float64", random_state=0)
    est = MAPADensity(**settings).fit(X)
    assert est.attachment_ == "ppca" and "probabilistic-PCA" in est.attachment_reason_
    loc, scale = probabilistic_pca_codes(X, 3)
    assert est.objective_.loc.dtype == torch.float64
    np.testing.assert_allclose(est.objective_.loc.detach().numpy(), loc, rtol=1e-14, atol=1e-10)
    np.testing.assert_allclose(est.objective_.log_scale.exp().detach().numpy(), scale,
                               rtol=1e-14, atol=1e-10)
    atoms = MAPADensity(code_start="atoms", **settings).fit(X)
    assert atoms.attachment_ == "pca"
    np.testing.assert_allclose(atoms.objective_.log_scale.exp().detach().numpy(), 0.1,
                               rtol=1e-14, atol=1e-10)
    # "auto" keeps the atoms' start where the PPCA posterior is not the codes' law or not asked
    for other in (dict(prior="uniform"), dict(init="random"), dict(latent_dim=2, codes="gaussian"),
                  dict(latent_dim=6)):
        assert MAPADensity(**{**settings, **other})._code_start(X) == "atoms"
    assert MAPADensity(**settings)._code_start(X) == "ppca"


def test_gaussian_codes_stay_at_the_ppca_start_where_the_data_pass_the_test_of_ppca():
    """``code_freeze_at="auto"``: on data that probabilistic PCA describes (isotropic noise;
    Bartlett's test passes) the codes stay exactly at the PPCA posterior while the decoder
    trains, one decoder pass per index (the smoother targets need learning codes). On the same
    data bent by ``tanh`` the test fails and the codes learn, as they do on the first data with
    ``code_freeze_at=0.75`` given. ``attachment_reason_`` says which and why."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 8)) + 0.3 * rng.normal(size=(200, 8))
    settings = dict(latent_dim=3, steps=20, batch_size=50, log_every=1, dtype="float64",
                    random_state=0)
    kept = MAPADensity(**settings).fit(X)
    loc, scale = probabilistic_pca_codes(X, 3)
    assert kept.ppca_isotropy_pvalue_ >= 0.01 and "so the codes stay there" in \
        kept.attachment_reason_
    assert torch.equal(kept.objective_.loc.detach(), torch.tensor(loc))
    np.testing.assert_allclose(kept.objective_.log_scale.exp().detach().numpy(), scale,
                               rtol=1e-14)
    bound = [row["bound_full"] for row in kept.history_]  # the decoder learns on
    assert kept.passes_per_step_ == 50 and bound[-1] > bound[0] + 1
    bent = MAPADensity(**settings).fit(np.tanh(X))
    assert bent.ppca_isotropy_pvalue_ < 0.01 and "learn until 0.75" in bent.attachment_reason_
    for moved in (bent, MAPADensity(code_freeze_at=0.75, **settings).fit(X)):
        start = probabilistic_pca_codes(moved.objective_.X, 3)[0]
        assert not np.allclose(moved.objective_.loc.detach().numpy(), start, atol=1e-3)
    assert MAPADensity(codes="gaussian", latent_dim=2, steps=2).fit(X).ppca_isotropy_pvalue_ \
        is None


def test_the_means_steps_are_the_plain_steps_times_the_codes_widths(circle, monkeypatch):
    """``code_mean_rate``: the means train in their own group at that rate, and each step's
    change of ``μ_n`` is multiplied by ``s_n``. Against the same fit whose rescaling is skipped
    (the same draws and gradients): ``(μ − μ') / s`` equals the plain step ``μ_plain − μ'``."""
    truth, X, _ = circle
    settings = dict(sigma=truth.sigma, steps=1, batch_size=50, codes="gaussian",
                    code_mean_rate=0.2, code_scale=0.3, dtype="float64", random_state=0)
    scaled = MAPADensity(**settings).fit(X)
    before = []
    monkeypatch.setattr(GaussianCodesBound, "steps_in_widths",
                        lambda self, previous: before.append(previous.clone()))
    plain = MAPADensity(**settings).fit(X)
    off = MAPADensity(**{**settings, "code_mean_rate": None}).fit(X)  # the default
    assert len(before) == 1 and len(off.objective_.parameter_groups()) == 2
    objective = scaled.objective_
    groups = objective.parameter_groups()
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 3.0, 20.0]  # 3 x: the scales' own
    assert groups[1]["params"][0] is objective.log_scale and groups[2]["params"][0] is objective.loc
    previous, = before
    s = objective.log_scale.detach()
    torch.testing.assert_close(s, plain.objective_.log_scale.detach(), rtol=0, atol=0)
    step = plain.objective_.loc.detach() - previous
    moved = step.abs() > 0
    assert moved.any(dim=1).sum() == 50  # the drawn codes, the others' gradients being zero
    # float64: each side's rounding is a few ulps of |μ| <= 4, far below 1e-12
    torch.testing.assert_close((objective.loc.detach() - previous) / s.exp(), step, rtol=0,
                               atol=1e-12)
    assert (step.abs()[moved] > 1e-3).all()  # the steps the test compares are not tiny


def test_mapa_posterior_is_over_training_indices_with_attached_codes(circle):
    truth, X, _ = circle
    est = MAPADensity(sigma=truth.sigma, steps=20, random_state=0).fit(X)  # 1-D: atoms
    post = est.posterior(X[:7])
    assert isinstance(post, DiscretePosterior)
    assert post.weights.shape == (7, 300)
    np.testing.assert_allclose(np.asarray(post.weights.sum(axis=1)).ravel(), 1.0)
    atoms = np.sort(est.objective_.attachment.atoms.numpy()[:, 0])
    np.testing.assert_allclose(np.sort(post.codes[:, 0]), atoms)  # codes are the atoms
    assert post.mean().shape == (7, 1)


def test_pass_counts_follow_the_method(circle):
    truth, X, _ = circle
    common = {"sigma": truth.sigma, "steps": 12, "batch_size": 50, "log_every": 12,
              "random_state": 0}
    mapa = MAPADensity(project_every=0, reattach_every=0, codes="atoms", **common).fit(X)
    assert mapa.total_passes_ == 12 * 50
    assert MAPADensity(codes="gaussian", **common).fit(X).total_passes_ == 12 * 50
    mapa = MAPADensity(project_every=5, reattach_every=4, codes="atoms", **common).fit(X)
    assert mapa.total_passes_ == 12 * 50 + 3 * 300  # 3 re-attachments decode every atom
    assert VAEDensity(**common).fit(X).total_passes_ == 12 * 2 * 50
    assert IWAEDensity(n_samples=5, **common).fit(X).total_passes_ == 12 * 50 * 6
    assert PriorISDensity(n_samples=50, **common).fit(X).total_passes_ == 12 * 50
    lagging = LaggingVAEDensity(max_inner=7, check_every=100, **common).fit(X)
    # each of the 12 steps starts aggressive (the first revert can only follow the second mutual
    # information check, after step 12), so each is preceded by 7 inner encoder steps of 2B
    # passes; the mutual information check (300 encoder passes) runs once per epoch of 6 steps
    assert lagging.total_passes_ == 12 * 2 * 50 + 12 * 7 * 2 * 50 + 2 * 300
    assert lagging.history_[-1]["passes"] == lagging.total_passes_


@pytest.mark.parametrize("method", ["mapa-gaussian", "mapa-atoms", "vae", "iwae", "lagging",
                                    "prior-is"])
def test_how_often_a_fit_logs_leaves_its_result_unchanged(method, circle):
    """Diagnostics draw from their own generator: logging every step or every 20 steps trains
    bitwise the same model."""
    truth, X, _ = circle
    fits = [make_estimator(method, sigma=truth.sigma, steps=20, batch_size=50, log_every=every,
                           random_state=0).fit(X) for every in (1, 20)]
    for a, b in zip(fits[0].objective_.parameters(), fits[1].objective_.parameters()):
        assert torch.equal(a, b)
    assert len(fits[0].history_) == 20 and len(fits[1].history_) == 1


def test_same_seed_same_result_and_different_seeds_differ(circle):
    truth, X, _ = circle
    runs = [MAPADensity(sigma=truth.sigma, steps=40, random_state=s).fit(X) for s in (3, 3, 4)]
    a, b, c = (r.score_samples(X[:10]) for r in runs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert runs[0].history_ == [{**row, "train_seconds": runs[0].history_[i]["train_seconds"]}
                                for i, row in enumerate(runs[1].history_)]


@pytest.mark.parametrize("cls, extra", [
    (MAPADensity, {"codes": "atoms", "project_every": 5, "reattach_every": 15}),
    (MAPADensity, {"codes": "gaussian", "code_learning_rate": 0.05}),
    (MAPADensity, {"codes": "gaussian", "code_learning_rate": 0.05, "code_mean_rate": 0.3}),
    (VAEDensity, {}), (LaggingVAEDensity, {})],
    ids=["mapa-atoms", "mapa", "mapa-steps-in-widths", "vae", "lagging"])
def test_checkpoint_round_trip_and_exact_resume(cls, extra, circle, tmp_path):
    truth, X, _ = circle
    # a constant rate: with the cosine schedule a longer budget is another schedule from step 0
    params = {"sigma": truth.sigma, "batch_size": 50, "log_every": 10, "random_state": 7,
              "lr_schedule": "constant", **extra}
    full = cls(steps=40, **params).fit(X)
    half = cls(steps=20, **params).fit(X)
    half.save(tmp_path / "half.pt")
    loaded = cls.load(tmp_path / "half.pt")
    np.testing.assert_array_equal(loaded.score_samples(X[:10]), half.score_samples(X[:10]))
    resumed = cls.load(tmp_path / "half.pt", steps=40)
    np.testing.assert_allclose(resumed.score_samples(X[:10]), full.score_samples(X[:10]),
                               rtol=1e-6)
    assert [r["passes"] for r in resumed.history_] == [r["passes"] for r in full.history_]
    if "code_learning_rate" in extra:  # the codes come back as saved
        np.testing.assert_array_equal(loaded.posterior(X[:3]).loc, half.posterior(X[:3]).loc)
        np.testing.assert_array_equal(loaded.posterior(X[:3]).scale, half.posterior(X[:3]).scale)


def test_checkpoint_of_a_custom_decoder_needs_the_architecture(circle, tmp_path):
    truth, X, _ = circle
    decoder = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    before = [p.detach().clone() for p in decoder.parameters()]
    est = MAPADensity(decoder=decoder, sigma=truth.sigma, steps=10, random_state=0).fit(X)
    for p, q in zip(before, decoder.parameters()):  # the user's module is left untouched
        assert torch.equal(p, q)
    est.save(tmp_path / "custom.pt")
    with pytest.raises(ValueError, match="custom decoder"):
        MAPADensity.load(tmp_path / "custom.pt")
    fresh = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    loaded = MAPADensity.load(tmp_path / "custom.pt", decoder=fresh)
    np.testing.assert_array_equal(loaded.score_samples(X[:5]), est.score_samples(X[:5]))
    with pytest.raises(ValueError, match="holds a MAPADensity checkpoint, not VAEDensity"):
        VAEDensity.load(tmp_path / "custom.pt")
    with pytest.raises(ValueError, match="does not exist"):
        MAPADensity.load(tmp_path / "missing.pt")


def test_learned_sigma_moves_from_its_data_driven_start(circle):
    truth, X, _ = circle
    est = VAEDensity(steps=200, random_state=0).fit(X)
    start = est.history_[0]["sigma"]
    assert est.model_.likelihood.learn_sigma
    assert est.sigma_ != pytest.approx(start)


def test_mapa_beats_the_vae_on_the_circle_given_the_true_ordering():
    """A real learning test: seeded, a few thousand steps, with margin."""
    truth = datasets.get("circle")
    X, Z = truth.sample(600, seed=0)
    common = {"sigma": truth.sigma, "steps": 2000, "random_state": 0, "log_every": 500,
              "learning_rate": 1e-3, "lr_schedule": "constant"}
    mapa = MAPADensity(init=Z, **common).fit(X)
    vae = VAEDensity(**common).fit(X)
    kl_mapa = test_kl(truth, mapa.score_samples, n_samples=2000, seed=1)
    kl_vae = test_kl(truth, vae.score_samples, n_samples=2000, seed=1)
    assert kl_mapa.mean + 3 * kl_mapa.se < kl_vae.mean - 3 * kl_vae.se
    assert kl_mapa.mean < 0.5 * kl_vae.mean


@pytest.mark.parametrize("make, message", [
    (lambda: make_estimator("gan"), "unknown method 'gan'"),
    (lambda: IWAEDensity(n_samples=0, **SMALL), "S must be an integer >= 1"),
    (lambda: PriorISDensity(n_samples=-2, **SMALL), "S must be an integer >= 1"),
    (lambda: MAPADensity(steps=0), "steps must be a positive integer"),
    (lambda: MAPADensity(batch_size=-5, steps=2), "batch_size must be a positive integer"),
    (lambda: MAPADensity(learning_rate=0.0, steps=2), "learning_rate must be a positive"),
    (lambda: MAPADensity(reattach_every=-1, steps=2), "reattach_every must be a non-negative"),
    (lambda: MAPADensity(decoder=torch.nn.Linear(1, 3), steps=2), r"expected \(2, 2\)"),
    (lambda: MAPADensity(decoder="mlp", steps=2), "decoder must be a torch.nn.Module"),
    (lambda: MAPADensity(init=np.zeros((5, 1)), steps=2), "init has 5 rows but X has 40"),
    (lambda: MAPADensity(init="bogus", steps=2), "unknown attachment method"),
    (lambda: MAPADensity(sigma=-1.0, steps=2), "sigma must be"),
    (lambda: MAPADensity(latent_dim=0, steps=2), "latent_dim must be a positive integer"),
    (lambda: MAPADensity(prior="cauchy", steps=2), "unknown prior 'cauchy'"),
    (lambda: VAEDensity(dtype="float16", steps=2), "dtype must be one of"),
    (lambda: MAPADensity(codes="points", steps=2), "codes must be 'auto', 'gaussian' or"),
    (lambda: MAPADensity(weights="knn", steps=2), "weights must be 'mapa' or 'identity'"),
    (lambda: MAPADensity(code_scale=0.0, steps=2), "code_scale must be a positive number"),
    (lambda: MAPADensity(importance_samples=0, steps=2),
     "importance_samples must be a positive integer"),
    (lambda: MAPADensity(importance_samples=2, steps=2), "the atoms .* take none"),
    (lambda: MAPADensity(code_learning_rate=-1, steps=2), "code_learning_rate must be"),
    (lambda: MAPADensity(code_tying=-1.0, codes="gaussian", steps=2),
     "code_tying must be 'auto' or a non-negative number"),
    (lambda: MAPADensity(code_tying=1.0, steps=2), "code_tying ties Gaussian codes"),
    (lambda: MAPADensity(code_freeze_at=-0.5, codes="gaussian", steps=2),
     r"code_freeze_at must be 'auto' or a share of the steps in \[0, 1\], got -0.5"),
    (lambda: MAPADensity(code_freeze_at=1.5, codes="gaussian", steps=2), "got 1.5"),
    (lambda: MAPADensity(code_freeze_at=0.5, steps=2), "code_freeze_at fixes Gaussian codes"),
    (lambda: MAPADensity(code_smoothing=0.5, codes="gaussian", steps=2),
     "code_smoothing must be 'auto', None or a number of effective neighbours of at least 1"),
    (lambda: MAPADensity(code_smoothing="more", codes="gaussian", steps=2), "got 'more'"),
    (lambda: MAPADensity(code_smoothing=2, steps=2), "code_smoothing smooths the targets"),
    (lambda: MAPADensity(code_smoothing=2, codes="gaussian", importance_samples=2, steps=2),
     "code_smoothing takes one draw per code"),
    (lambda: MAPADensity(code_mean_rate=0.0, codes="gaussian", steps=2),
     "code_mean_rate must be a positive number, got 0.0"),
    (lambda: MAPADensity(code_mean_rate="fast", codes="gaussian", steps=2), "got 'fast'"),
    (lambda: MAPADensity(code_mean_rate=float("nan"), codes="gaussian", steps=2), "got nan"),
    (lambda: MAPADensity(code_mean_rate=0.5, steps=2),
     "code_mean_rate sets the steps of Gaussian codes' means; the atoms"),
    (lambda: MAPADensity(code_start="pca", codes="gaussian", steps=2),
     "code_start must be 'auto', 'atoms' or 'ppca', got 'pca'"),
    (lambda: MAPADensity(code_start="ppca", steps=2),
     "code_start sets where Gaussian codes start; the atoms"),
    (lambda: MAPADensity(code_start="ppca", codes="gaussian", prior="uniform", steps=2),
     "code_start='ppca' starts the codes at a posterior under the normal prior; "
     "prior='uniform' takes code_start='atoms'"),
    (lambda: MAPADensity(code_start="ppca", codes="gaussian", init="random", steps=2),
     "code_start='ppca' sets the codes' start itself; leave init at 'auto'"),
    (lambda: MAPADensity(code_start="ppca", codes="gaussian", latent_dim=2, steps=2),
     "probabilistic PCA with latent_dim=2 needs more points and data dimensions than that"),
    (lambda: MAPADensity(features="pca", steps=2), "features must be 'auto', None, a number"),
    (lambda: MAPADensity(effective_neighbours="many", steps=2),
     "effective_neighbours must be 'auto', None or a number"),
])
def test_bad_settings_give_clear_errors(make, message):
    X = np.random.default_rng(0).normal(size=(40, 2))
    with pytest.raises(ValueError, match=message):
        make().fit(X)


@pytest.mark.parametrize("method", ["mapa", "mapa-gaussian", "vae", "prior-is"])
def test_training_runs_in_the_asked_floating_point_type(method, circle):
    _, X, _ = circle
    est = make_estimator(method, sigma=0.1, steps=3, random_state=0, dtype="float64").fit(X)
    assert {p.dtype for p in est.objective_.parameters()} == {torch.float64}
    assert est.trainer_.X.dtype == torch.float64
    single = make_estimator(method, sigma=0.1, steps=3, random_state=0).fit(X)
    assert {p.dtype for p in single.objective_.parameters()} == {torch.float32}
    assert est.score_samples(X[:5]).dtype == np.float64


def test_atoms_positions_learn_at_the_code_learning_rate():
    X = np.random.default_rng(0).normal(size=(200, 3))
    fit = {"latent_dim": 2, "sigma": 0.3, "steps": 60, "batch_size": 50, "init": "isomap",
           "reattach_every": 0, "lr_schedule": "constant", "random_state": 0}

    def attachment(**extra):
        est = MAPADensity(**fit, **extra).fit(X)
        return est.objective_.attachment.perm.numpy(), est.trainer_

    unprojected, _ = attachment(project_every=0)
    # positions that barely move keep their atoms when projected
    frozen, _ = attachment(project_every=20, code_learning_rate=1e-9)
    np.testing.assert_array_equal(frozen, unprojected)
    moved, _ = attachment(project_every=20, code_learning_rate=0.05)
    assert (moved != unprojected).any()
    _, trainer = attachment(project_every=20)
    lr = {id(p): g["lr"] for g in trainer.generative_optimizer.param_groups for p in g["params"]}
    positions = trainer.objective.attachment.positions
    assert lr[id(positions)] == pytest.approx(POSITION_RATE * 0.01)  # MAPA's protocol rate
    assert all(v == pytest.approx(0.01) for k, v in lr.items() if k != id(positions))


def test_codes_follow_the_latent_dimension_unless_given():
    X = np.random.default_rng(0).normal(size=(60, 3))
    fit = {"sigma": 0.5, "steps": 2, "batch_size": 20, "random_state": 0}
    assert isinstance(MAPADensity(**fit).fit(X).objective_, MAPABound)
    assert isinstance(MAPADensity(latent_dim=2, **fit).fit(X).objective_, MAPABound)
    assert isinstance(MAPADensity(latent_dim=3, **fit).fit(X).objective_, GaussianCodesBound)
    assert isinstance(make_estimator("mapa-atoms", latent_dim=3, **fit).fit(X).objective_,
                      MAPABound)
    assert isinstance(make_estimator("mapa-gaussian", **fit).fit(X).objective_,
                      GaussianCodesBound)


def test_features_follow_the_latent_dimension_unless_given():
    """``features="auto"``: above two latent dimensions MAPA works on the first ``latent_dim``
    whitened principal components, where the data have more dimensions; else on the data."""
    X = np.random.default_rng(0).normal(size=(60, 5)) * np.arange(1, 6)
    fit = {"steps": 2, "batch_size": 20, "random_state": 0}
    est = MAPADensity(latent_dim=3, **fit).fit(X)
    assert est.features_.n_components == 3 and est.features_.whiten
    assert est.mapa_.n_features_in_ == 3
    np.testing.assert_allclose(np.cov(est.features_.transform(X), rowvar=False), np.eye(3),
                               atol=1e-12)
    assert MAPADensity(latent_dim=2, **fit).fit(X).features_ is None
    assert MAPADensity(latent_dim=5, **fit).fit(X).features_ is None  # as many as the data
    assert MAPADensity(latent_dim=3, features=None, **fit).fit(X).features_ is None
    assert MAPADensity(latent_dim=3, features=4, **fit).fit(X).features_.n_components == 4


def test_auto_smoothing_caps_the_leave_one_out_width_above_two_latent_dimensions():
    """``effective_neighbours="auto"``: above two latent dimensions a leave-one-out width that
    smooths the median training row over more than ``MAX_NEIGHBOURS_ABOVE_2D`` effective
    neighbours is lowered to give that many; up to two, and with ``None``, it is kept."""
    from mapa_vae.mapa import effective_neighbour_counts
    from mapa_vae.mapa_setup import MAX_NEIGHBOURS_ABOVE_2D

    X = np.random.default_rng(1).normal(size=(200, 6))  # dense in 3 components: wide LOO width
    fit = {"steps": 2, "batch_size": 50, "random_state": 0}
    capped = MAPADensity(latent_dim=3, **fit).fit(X).mapa_
    assert capped.bandwidth_rule_ == "loo_capped"
    F = capped.X_fit_
    counts = effective_neighbour_counts(((F[:, None] - F[None]) ** 2).sum(-1),
                                        capped.bandwidth_)
    assert np.median(counts) == pytest.approx(MAX_NEIGHBOURS_ABOVE_2D, rel=1e-4)
    uncapped = MAPADensity(latent_dim=3, effective_neighbours=None, **fit).fit(X).mapa_
    assert uncapped.bandwidth_rule_ == "loo" and uncapped.bandwidth_ > capped.bandwidth_
    assert MAPADensity(latent_dim=2, **fit).fit(X).mapa_.bandwidth_rule_ == "loo"
    assert MAPADensity(latent_dim=3, sigma=0.5, features=None, **fit).fit(X).mapa_ \
        .bandwidth_rule_ == "sigma"


def test_bad_data_gives_clear_errors():
    with pytest.raises(ValueError, match="NaN"):
        MAPADensity(steps=2).fit(np.array([[0.0, np.nan], [1.0, 1.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match="minimum of 2"):
        MAPADensity(steps=2).fit(np.zeros((1, 2)))
    est = MAPADensity(steps=2, random_state=0).fit(np.random.default_rng(0).normal(size=(30, 2)))
    with pytest.raises(ValueError, match="X has 3 features, but MAPADensity is expecting 2"):
        est.score_samples(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        est.sample(0)


def test_pilot_runs_choose_the_attachment_by_the_bound_and_share_the_step_budget(circle,
                                                                                    tmp_path):
    truth, X, _ = circle
    est = MAPADensity(sigma=truth.sigma, steps=60, batch_size=50, pilot_steps=10, log_every=10,
                      codes="atoms", reattach_every=0, random_state=0).fit(X)
    assert set(est.pilot_bounds_) == {"coarse", "fiedler", "angle"}
    assert est.attachment_ == max(est.pilot_bounds_, key=est.pilot_bounds_.get)
    # the winner stops at 60 − 2·10 steps; with the losers' 20, 60 optimiser steps in all, and
    # each candidate's bound over all 300 points costs 300 decoder passes
    assert est.trainer_.step == 40 and est.optimizer_steps_ == 60
    assert est.total_passes_ == 60 * 50 + 3 * 300
    assert est.history_[0]["passes"] == 3 * 10 * 50  # the first row: all three candidates
    assert est.history_[-1]["passes"] == est.total_passes_
    # the chosen candidate's pilot bound is what its own 10 steps give
    alone = MAPADensity(sigma=truth.sigma, steps=40, batch_size=50, init=est.attachment_,
                        pilot_steps=10, log_every=10, codes="atoms", reattach_every=0,
                        random_state=0)
    alone.fit(X)
    np.testing.assert_allclose(alone.history_[0]["bound_full"],
                               est.pilot_bounds_[est.attachment_], rtol=1e-5)
    est.save(tmp_path / "pilot.pt")
    loaded = MAPADensity.load(tmp_path / "pilot.pt")
    assert loaded.attachment_ == est.attachment_ and loaded.pilot_bounds_ == est.pilot_bounds_
    assert est.attachment_reason_ == ("the highest MAPA bound after 10 pilot steps of each "
                                      "candidate (coarse, fiedler, angle; see pilot_bounds_)")
    assert loaded.attachment_reason_ == est.attachment_reason_
    np.testing.assert_array_equal(loaded.score_samples(X[:5]), est.score_samples(X[:5]))
    longer = MAPADensity.load(tmp_path / "pilot.pt", steps=80)
    assert longer.trainer_.step == 60 and longer.optimizer_steps_ == 80


@pytest.mark.parametrize("params, attachment, reason", [
    ({"steps": 30, "pilot_steps": 10}, "seriation",
     "pilots skipped: steps=30 leave no room for 3 candidates x 10 pilot steps (that needs "
     "steps > 30); used the least rough candidate (seriation)"),
    ({"steps": 20, "pilot_steps": 0}, "seriation",
     "pilots skipped: pilot_steps=0; used the least rough candidate (seriation)"),
    ({"steps": 20, "init": "fiedler"}, "fiedler", "init='fiedler'"),
])
def test_the_estimator_says_why_pilots_did_not_choose(circle, params, attachment, reason):
    truth, X, _ = circle
    est = MAPADensity(sigma=truth.sigma, batch_size=50, random_state=0, **params).fit(X)
    assert (est.attachment_, est.pilot_bounds_, est.attachment_reason_) == (attachment, {},
                                                                            reason)


def test_one_candidate_needs_no_pilots():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.1]])  # too few points for spectral candidates
    est = MAPADensity(sigma=0.5, steps=5, random_state=0).fit(X)
    assert (est.attachment_, est.pilot_bounds_) == ("greedy", {})
    assert est.attachment_reason_ == "no pilots: greedy is the only distinct candidate"


def test_given_coordinates_survive_a_checkpoint(circle, tmp_path):
    truth, X, Z = circle
    est = MAPADensity(sigma=truth.sigma, steps=20, init=Z, random_state=0).fit(X)
    assert est.attachment_ == "given" and est.pilot_bounds_ == {}
    assert est.attachment_reason_ == "init gave coordinates per training point"
    est.save(tmp_path / "given.pt")
    loaded = MAPADensity.load(tmp_path / "given.pt")
    np.testing.assert_array_equal(loaded.init, Z)
    np.testing.assert_array_equal(loaded.score_samples(X[:5]), est.score_samples(X[:5]))


@pytest.mark.parametrize("make, min_ess", [
    (lambda **p: MAPADensity(codes="gaussian", **p), 100), (lambda **p: MAPADensity(**p), 0),
    (lambda **p: VAEDensity(**p), 0), (lambda **p: PriorISDensity(**p), 0)],
    ids=["mapa-gaussian", "mapa-atoms", "vae", "prior-is"])
def test_importance_sampling_agrees_with_quadrature(make, min_ess):
    """In a 2-D latent space quadrature is exact, so the one evaluator (proposals fitted to each
    point), the prior and each method's own proposal (MAPA's mixture of logit-normal codes or
    of atoms, the encoder, the prior) must reproduce it within their standard errors. The
    mixture of MAPA's learned codes misses part of some posteriors early in training: there
    it is checked where it covers the posterior (effective sample size at least ``min_ess``, at
    least a third of the rows), and elsewhere the estimate, unbiased in p, may only fall short
    of it."""
    truth = datasets.get("swiss-roll")
    X, _ = truth.sample(300, seed=0)
    est = make(sigma=truth.sigma, latent_dim=2, prior="uniform", steps=150, batch_size=50,
               learning_rate=1e-3, lr_schedule="constant", random_state=0).fit(X)
    exact = est.score_samples(X[:12])
    for proposal in ("fitted", "model", "prior"):
        estimate = est.log_likelihood(X[:12], n_samples=4000, proposal=proposal, random_state=1)
        assert estimate.log_prob.shape == estimate.se.shape == (12,)
        assert (estimate.ess >= 1).all() and (estimate.ess <= 4000 + 1e-6).all()
        covered = estimate.ess >= (min_ess if proposal == "model" else 0)
        assert covered.sum() >= 4
        error, margin = estimate.log_prob - exact, 5 * estimate.se + 0.02
        np.testing.assert_array_less(np.abs(error[covered]), margin[covered])
        np.testing.assert_array_less(error, margin)
    with pytest.raises(ValueError, match="proposal must be"):
        est.log_likelihood(X[:2], proposal="laplace")


def test_latent_dimension_three_is_scored_by_importance_sampling():
    X = np.random.default_rng(0).normal(size=(200, 4))
    est = MAPADensity(sigma=0.5, latent_dim=3, steps=30, random_state=0).fit(X)
    scores = est.score_samples(X[:5])
    np.testing.assert_array_equal(scores, est.log_likelihood(X[:5]).log_prob)
    assert np.isfinite(scores).all()


def test_kernel_width_is_chosen_on_held_out_points_by_grid_search(circle):
    """scikit-learn's GridSearchCV over ``effective_neighbours`` with one held-out split scores
    each width by the held-out log-likelihood of a fit on the rest (seeded, so a fit by hand
    gives the same number exactly) and refits the best on all points."""
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, ShuffleSplit

    truth, X, _ = circle
    split = ShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
    base = MAPADensity(sigma=truth.sigma, steps=30, random_state=0)
    widths = [None, 3.0]
    search = GridSearchCV(base, {"effective_neighbours": widths}, cv=split).fit(X)
    train, test = next(split.split(X))
    by_hand = [clone(base).set_params(effective_neighbours=k).fit(X[train]).score(X[test])
               for k in widths]
    assert list(search.cv_results_["mean_test_score"]) == by_hand
    best = search.best_estimator_
    assert best.effective_neighbours == widths[int(np.argmax(by_hand))]
    assert best.n_features_in_ == 2 and best.mapa_.weights_.shape == (300, 300)
    assert clone(base).set_params(effective_neighbours=3.0).fit(X).mapa_.bandwidth_rule_ == \
        "effective_neighbours"


# --- the Bernoulli likelihood -------------------------------------------------------------
def _binary_rows(n=200, d=10, seed=0):
    """Binary rows of ``d`` pixels: a latent switch and pixel flips."""
    rng = np.random.default_rng(seed)
    on = rng.random((n, 1)) < 0.4
    return (on ^ (rng.random((n, d)) < 0.15)).astype(float)


ALL_BINARY = np.array([[(v >> j) & 1 for j in range(10)] for v in range(2**10)], dtype=float)


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_a_bernoulli_model_is_a_distribution_over_binary_vectors(method):
    """With one latent dimension quadrature is exact up to rounding, so Σ_x p_θ(x) over all 2¹⁰
    binary vectors is Σ_m w_m Σ_x p(x | y_m) = 1, whatever the training did; samples are binary."""
    est = make_estimator(method, likelihood="bernoulli", steps=20, batch_size=50,
                         random_state=0).fit(_binary_rows())
    log_p = est.score_samples(ALL_BINARY)
    assert np.all(log_p < 0)
    assert np.exp(log_p).sum() == pytest.approx(1.0, abs=1e-10)
    assert set(np.unique(est.sample(50, random_state=0))) <= {0.0, 1.0}
    assert est.sigma_ is None


@pytest.mark.parametrize("method, passes", [("mapa", 50), ("mapa-gaussian", 50), ("vae", 100),
                                            ("iwae", 550)])
def test_a_bernoulli_likelihood_keeps_each_methods_passes_per_step(method, passes):
    est = make_estimator(method, likelihood="bernoulli", latent_dim=2, steps=4, batch_size=50,
                         pilot_steps=0, random_state=0) if method.startswith("mapa") else \
        make_estimator(method, likelihood="bernoulli", latent_dim=2, steps=4, batch_size=50,
                       random_state=0)
    est.fit(np.random.default_rng(1).random((100, 5)))
    assert est.passes_per_step_ == passes


def test_bernoulli_gaussian_codes_skip_the_test_of_ppca():
    X = np.random.default_rng(2).random((120, 6))
    est = MAPADensity(likelihood="bernoulli", latent_dim=3, steps=20, random_state=0).fit(X)
    assert est.ppca_isotropy_pvalue_ is None
    assert "applies under the Gaussian likelihood only" in est.attachment_reason_
    log_p = est.log_likelihood(_binary_rows(5, 6), n_samples=200).log_prob
    assert np.all(np.isfinite(log_p)) and np.all(log_p < 0)


def test_bernoulli_settings_and_data_are_checked_before_any_work():
    X = np.random.default_rng(3).random((30, 3))
    with pytest.raises(ValueError, match="sigma=0.2 is the Gaussian likelihood's noise; "
                                         "likelihood='bernoulli' has none"):
        MAPADensity(likelihood="bernoulli", sigma=0.2, steps=2).fit(X)
    with pytest.raises(ValueError, match=r"X: the Bernoulli likelihood takes values in \[0, 1\]"):
        VAEDensity(likelihood="bernoulli", steps=2).fit(X * 2)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        IWAEDensity(likelihood="poisson", steps=2).fit(X)


def test_a_bernoulli_checkpoint_round_trips(tmp_path):
    est = MAPADensity(likelihood="bernoulli", steps=10, random_state=0).fit(_binary_rows())
    est.save(tmp_path / "m.pt")
    back = MAPADensity.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(back.score_samples(ALL_BINARY),
                                  est.score_samples(ALL_BINARY))
