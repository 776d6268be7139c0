"""The plugin's Hydra config: ``hydra/launcher=kubernetes`` (conf/launcher/kubernetes.yaml selects it).

Every Kubernetes setting lives in the run config's ``launcher`` node (framework.launcher_config.LauncherConfig),
per job, so a sweep can vary them (e.g. launcher.namespace). This node only names the Launcher class.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class KubernetesLauncherConf:
    _target_: str = "hydra_plugins.kubernetes_launcher.kubernetes_launcher.KubernetesLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="kubernetes", node=KubernetesLauncherConf, provider="kubernetes_launcher"
)
