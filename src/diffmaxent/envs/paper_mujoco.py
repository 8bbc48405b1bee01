"""The six Gym MuJoCo tasks as the MaxEntDP and DIME papers trained on them: ``paper/Ant-v3``,
``paper/HalfCheetah-v3``, ``paper/Hopper-v3``, ``paper/Humanoid-v3``, ``paper/Swimmer-v3`` and
``paper/Walker2d-v3`` (registered on import).

The papers ran Gym's v3 envs on mujoco-py 2.1, which does not install here. Gymnasium's v4 envs
carry v3's reward, observation, reset noise, frame skip and termination code over to the new
bindings, with two differences that reach the agent, both undone here:

* Gymnasium's step ends with ``mj_rnePostConstraint``, which fills ``cfrc_ext`` (each body's
  contact force). mujoco-py's step was ``mj_step`` alone, and since MuJoCo 2.0 ``mj_step`` leaves
  ``cfrc_ext`` at zero in models without force sensors (none of these has one). So the papers'
  Ant (111 numbers) and Humanoid (376) observed 84 zeros where v4 observes contact forces, and
  Ant's contact cost was 0. Here the step is ``mj_step`` alone again.
* Ant-v4 leaves contact forces out of the observation by default (27 numbers); ``paper/Ant-v3``
  keeps them (zeros, as above), so networks get v3's 111 inputs and their initial scale.

docs/envs.md compares each task with v3 and v5, with the evidence.
"""

from __future__ import annotations

import gymnasium as gym
import mujoco
from gymnasium.envs.mujoco import (
    ant_v4,
    half_cheetah_v4,
    hopper_v4,
    humanoid_v4,
    swimmer_v4,
    walker2d_v4,
)

PAPER_NAMESPACE = "paper"
PAPER_VERSION = 3
PAPER_EPISODE_STEPS = 1000


class MujocoPyStep:
    """Steps as mujoco-py did (``mj_step`` alone), leaving ``cfrc_ext`` at zero."""

    def _step_mujoco_simulation(self, ctrl, n_frames):
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=n_frames)


class PaperAntEnv(MujocoPyStep, ant_v4.AntEnv):
    """Ant-v3 as trained on: 111 observations (the last 84 zero), no contact cost."""


class PaperHalfCheetahEnv(MujocoPyStep, half_cheetah_v4.HalfCheetahEnv):
    """HalfCheetah-v3 as trained on (the same as HalfCheetah-v4)."""


class PaperHopperEnv(MujocoPyStep, hopper_v4.HopperEnv):
    """Hopper-v3 as trained on (the same as Hopper-v4)."""


class PaperHumanoidEnv(MujocoPyStep, humanoid_v4.HumanoidEnv):
    """Humanoid-v3 as trained on: 376 observations (the last 84 zero), no contact cost."""


class PaperSwimmerEnv(MujocoPyStep, swimmer_v4.SwimmerEnv):
    """Swimmer-v3 as trained on (the same as Swimmer-v4)."""


class PaperWalker2dEnv(MujocoPyStep, walker2d_v4.Walker2dEnv):
    """Walker2d-v3 as trained on (the same as Walker2d-v4)."""


# task -> (env class, gym.make kwargs)
PAPER_ENVS: dict[str, tuple[type[gym.Env], dict[str, bool]]] = {
    "Ant": (PaperAntEnv, {"use_contact_forces": True}),
    "HalfCheetah": (PaperHalfCheetahEnv, {}),
    "Hopper": (PaperHopperEnv, {}),
    "Humanoid": (PaperHumanoidEnv, {}),
    "Swimmer": (PaperSwimmerEnv, {}),
    "Walker2d": (PaperWalker2dEnv, {}),
}


def paper_id(task: str) -> str:
    """``Ant`` -> ``paper/Ant-v3``."""
    return f"{PAPER_NAMESPACE}/{task}-v{PAPER_VERSION}"


for _task, (_env_class, _kwargs) in PAPER_ENVS.items():
    if paper_id(_task) not in gym.registry:
        gym.register(
            id=paper_id(_task),
            entry_point=f"{__name__}:{_env_class.__name__}",
            max_episode_steps=PAPER_EPISODE_STEPS,
            kwargs=_kwargs,
        )
