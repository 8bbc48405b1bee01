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
# A policy whose noise predictor is not linear in a_t (antithetic pairs cancel less there).
MIXTURE_MEANS = ((0.5, 0.5), (-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5))
MIXTURE_STD = 0.1
# (rule, levels T, samples N, control variate, antithetic)
SETTINGS = [
    ("rectangle", 20, 50, False, False),  # the paper's eq. 21 (official code)
    ("rectangle", 20, 50, True, False),
    ("gauss_legendre", 4, 4, False, False),
    ("gauss_legendre", 6, 4, False, False),
    ("gauss_legendre", 6, 4, True, False),
    ("gauss_legendre", 8, 8, False, False),
    ("gauss_legendre", 8, 8, True, False),
    ("gauss_legendre", 8, 8, True, True),
    ("gauss_legendre", 12, 8, False, False),
    ("gauss_legendre", 12, 8, True, False),
    ("gauss_legendre", 12, 8, True, True),  # the `fast` preset
    ("gauss_legendre", 16, 8, True, False),
    ("gauss_legendre", 12, 32, True, False),
]


def _draw_gaussian(key: jax.Array, std: float) -> jax.Array:
    return std * jax.random.normal(key, (ACTIONS, DIM))


def policies() -> list[tuple[str, diffusion.EpsFn, object]]:
    """(column name, exact noise predictor, (key -> actions [ACTIONS, DIM], log-density))."""
    result = []
    for std in STDS:
        draw = functools.partial(_draw_gaussian, std=std)
        density = functools.partial(diffusion.gaussian_log_prob, mean=0.0, std=std)
        result.append((f"std {std}", diffusion.gaussian_eps_fn(0.0, std), draw, density))
    means = jnp.asarray(MIXTURE_MEANS)

    def draw_mixture(key):
        component_key, noise_key = jax.random.split(key)
        component = jax.random.randint(component_key, (ACTIONS,), 0, len(MIXTURE_MEANS))
        return means[component] + MIXTURE_STD * jax.random.normal(noise_key, (ACTIONS, DIM))

    density = functools.partial(diffusion.mixture_log_prob, means=means, std=MIXTURE_STD)
    result.append(("4-mode mixture", diffusion.mixture_eps_fn(means, MIXTURE_STD), draw_mixture,
                   density))  # fmt: skip
    return result


def measure(setting, eps_fn, draw, density) -> tuple[float, float]:
    """Mean and standard deviation over actions of the error per action dimension (nats)."""
    rule, levels, samples, control_variate, antithetic = setting
    key_a, key_e = jax.random.split(jax.random.PRNGKey(0))
    actions = draw(key_a)
    estimate = jax.jit(
        functools.partial(
            diffusion.log_prob,
            eps_fn,
            logprob_rule=rule,
            num_levels=levels,
            num_samples=samples,
            control_variate=control_variate,
            antithetic=antithetic,
        )
    )(key_e, actions)
    error = np.asarray(estimate - density(actions)) / DIM
    return float(error.mean()), float(error.std())


def main() -> None:
    columns = policies()
    header = "| rule | T | N | control variate | antithetic | passes | " + " | ".join(
        f"{name}: bias / sd" for name, *_ in columns
    )
    print(header + " |")
    print("|" + "---|" * (6 + len(columns)))
    for setting in SETTINGS:
        rule, levels, samples, control_variate, antithetic = setting
        cells = [f"{b:+.3f} / {sd:.2f}" for b, sd in (measure(setting, *c[1:]) for c in columns)]
        flags = " | ".join("yes" if flag else "no" for flag in (control_variate, antithetic))
        row = f"| {rule} | {levels} | {samples} | {flags} | {levels * samples} | "
        print(row + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    jnp.zeros(1).block_until_ready()
    main()
