"""Shared diffusion core of MaxEntDP (Dong et al., "Maximum Entropy Reinforcement Learning with
Diffusion Policy", 2025): the VP cosine schedule in log-SNR, the noise-prediction network, samplers,
the Q-weighted noise estimation target, and the numerical log-probability.

Functions are pure and take an ``eps_fn(noisy_action, log_snr) -> eps`` closure, so they run with
``NoiseNet`` in agents and with the exact Gaussian denoiser (:func:`gaussian_eps_fn`) in tests.
"""

from diffmaxent.diffusion.analytic import (
    gaussian_eps_fn,
    gaussian_log_prob,
    mixture_eps_fn,
    mixture_log_prob,
)
from diffmaxent.diffusion.dime import (
    ControlNet,
    DIMEPolicy,
    DIMESample,
    cosine_dt_shape,
    dime_chain,
)
from diffmaxent.diffusion.logprob import (
    DEFAULT_LOGPROB_RULE,
    DEFAULT_NUM_LEVELS,
    LOGPROB_RULES,
    log_prob,
    quadrature,
)
from diffmaxent.diffusion.networks import FourierFeatures, NoiseNet, broadcast_leading
from diffmaxent.diffusion.samplers import (
    DEFAULT_SAMPLER,
    SAMPLERS,
    EpsFn,
    clip_denoiser,
    ddim_sample,
    ddpm_sample,
    dpm_solver_2m_sample,
    sample,
)
from diffmaxent.diffusion.schedule import (
    DISCRETE_SCHEDULES,
    LOG_SNR_MAX,
    LOG_SNR_MIN,
    SPACINGS,
    T_MAX,
    T_MIN,
    alpha_bar,
    alpha_bar_from_log_snr,
    alpha_from_log_snr,
    discrete_betas,
    discrete_log_snr_grid,
    log_snr,
    log_snr_from_alpha_bar,
    log_snr_grid,
    sample_grid_log_snr,
    sample_log_snr,
    sigma_from_log_snr,
    time_from_log_snr,
    time_grid,
)
from diffmaxent.diffusion.targets import (
    DEFAULT_SCORE_TARGET,
    SCORE_TARGETS,
    QFn,
    noise_target,
    truncated_candidate_noise,
)

__all__ = [
    "DEFAULT_LOGPROB_RULE",
    "DEFAULT_NUM_LEVELS",
    "DEFAULT_SAMPLER",
    "DEFAULT_SCORE_TARGET",
    "DISCRETE_SCHEDULES",
    "LOGPROB_RULES",
    "LOG_SNR_MAX",
    "LOG_SNR_MIN",
    "SAMPLERS",
    "SCORE_TARGETS",
    "SPACINGS",
    "T_MAX",
    "T_MIN",
    "ControlNet",
    "DIMEPolicy",
    "DIMESample",
    "EpsFn",
    "FourierFeatures",
    "NoiseNet",
    "QFn",
    "alpha_bar",
    "alpha_bar_from_log_snr",
    "alpha_from_log_snr",
    "broadcast_leading",
    "clip_denoiser",
    "cosine_dt_shape",
    "ddim_sample",
    "ddpm_sample",
    "dime_chain",
    "discrete_betas",
    "discrete_log_snr_grid",
    "dpm_solver_2m_sample",
    "gaussian_eps_fn",
    "gaussian_log_prob",
    "log_prob",
    "log_snr",
    "log_snr_from_alpha_bar",
    "log_snr_grid",
    "mixture_eps_fn",
    "mixture_log_prob",
    "noise_target",
    "quadrature",
    "sample",
    "sample_grid_log_snr",
    "sample_log_snr",
    "sigma_from_log_snr",
    "time_from_log_snr",
    "time_grid",
    "truncated_candidate_noise",
]
