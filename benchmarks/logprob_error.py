"""Error against cost of the diffusion log-probability estimators, with an exact denoiser.

For a Gaussian policy N(0, s^2 I) the exact noise predictor is known in closed form
(`diffusion.gaussian_eps_fn`), so any error of `diffusion.log_prob` is the estimator's own: the
quadrature rule's bias and the Monte Carlo noise of its N samples per level. Cost is counted in
network passes per action (levels x samples), the quantity that sets the critic target's price.

    python benchmarks/logprob_error.py            # prints a markdown table
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffmaxent import diffusion

DIM = 2
ACTIONS = 4096
STDS = (1.0, 0.3, 0.05)
# (rule, levels T, samples N, control variate)
SETTINGS = [
    ("rectangle", 20, 50, False),  # the paper's eq. 21 (official code)
    ("rectangle", 20, 50, True),
    ("gauss_legendre", 4, 4, False),
    ("gauss_legendre", 6, 4, False),
    ("gauss_legendre", 6, 4, True),
    ("gauss_legendre", 8, 8, False),
    ("gauss_legendre", 8, 8, True),
    ("gauss_legendre", 12, 8, False),
    ("gauss_legendre", 12, 8, True),
    ("gauss_legendre", 16, 8, True),
    ("gauss_legendre", 12, 32, True),
]


def measure(rule: str, levels: int, samples: int, control_variate: bool, std: float):
    eps_fn = diffusion.gaussian_eps_fn(0.0, std)
    key_a, key_e = jax.random.split(jax.random.PRNGKey(0))
    actions = std * jax.random.normal(key_a, (ACTIONS, DIM))
    estimate = jax.jit(
        functools.partial(
            diffusion.log_prob,
            eps_fn,
            logprob_rule=rule,
            num_levels=levels,
            num_samples=samples,
            control_variate=control_variate,
        )
    )(key_e, actions)
    exact = diffusion.gaussian_log_prob(actions, 0.0, std)
    error = np.asarray(estimate - exact) / DIM
    return float(error.mean()), float(error.std())


def main() -> None:
    header = "| rule | levels T | samples N | control variate | passes | " + " | ".join(
        f"std {s}: bias / sd" for s in STDS
    )
    print(header + " |")
    print("|" + "---|" * (5 + len(STDS)))
    for rule, levels, samples, control_variate in SETTINGS:
        cells = []
        for std in STDS:
            bias, sd = measure(rule, levels, samples, control_variate, std)
            cells.append(f"{bias:+.3f} / {sd:.2f}")
        cv = "yes" if control_variate else "no"
        row = f"| {rule} | {levels} | {samples} | {cv} | {levels * samples} | "
        print(row + " | ".join(cells) + " |")


if __name__ == "__main__":
    jnp.zeros(1).block_until_ready()
    main()
