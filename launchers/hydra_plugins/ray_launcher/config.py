"""The plugin's Hydra config: ``hydra/launcher=ray`` (conf/launcher/ray.yaml selects it).

Every Ray setting lives in the run config's ``launcher`` node (framework.launcher_config.LauncherConfig), per
job, so a sweep can vary them (e.g. launcher.max_failures). This node only names the Launcher class.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.ray_launcher.ray_launcher.RayLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="ray", node=RayLauncherConf, provider="ray_launcher"
)
