"""mapa-vae: train latent-variable generative models without an encoder, using MAPA.

MAPA (model-agnostic posterior approximation) is a deterministic posterior over training indices,
``MAPA(n | x) ∝ exp(−‖x − x_n‖² / (2h²))``, computed from the data alone, once, before training.
"""
from . import datasets
from .empirical import EmpiricalizedModel
from .estimators import IWAEDensity, LaggingVAEDensity, MAPADensity, PriorISDensity, VAEDensity
from .evaluation import ImportanceEstimate, KLEstimate, compare_posteriors, log_marginal, test_kl
from .ground_truth import GroundTruth, LinearGaussian
from .likelihood import GaussianLikelihood
from .mapa import MAPAPosterior
from .methods import make_estimator
from .marginal import estimate_log_marginal
from .priors import StandardNormal, Uniform

__version__ = "0.1.0"

__all__ = [
    "EmpiricalizedModel",
    "GaussianLikelihood",
    "GroundTruth",
    "IWAEDensity",
    "ImportanceEstimate",
    "KLEstimate",
    "LaggingVAEDensity",
    "LinearGaussian",
    "MAPADensity",
    "MAPAPosterior",
    "PriorISDensity",
    "StandardNormal",
    "Uniform",
    "VAEDensity",
    "compare_posteriors",
    "datasets",
    "estimate_log_marginal",
    "log_marginal",
    "make_estimator",
    "test_kl",
]
