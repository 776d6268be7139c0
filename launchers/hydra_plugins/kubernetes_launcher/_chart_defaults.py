"""The launcher settings a dockerfiles/chart release implies, read back from the ConfigMap it created, so users
do not repeat names (namespace, run-dir PVC, other PVC mounts, Secret names, the shared HF cache)::

    python -m framework launcher=kubernetes $(framework-jobs defaults -n team-a) hardware=a100x8 ...

Each setting becomes one Hydra override ``++launcher.<key>=<value>``, values quoted in Hydra's grammar (no
spaces, so the shell's word splitting keeps each whole). Pure apart from :func:`read`.
"""

from __future__ import annotations

from typing import Any

import yaml

CONFIGMAP = "framework-launcher-defaults"  # launcherDefaults.name in the chart's values
KEY = "launcher.yaml"


def hydra_value(value: Any) -> str:
    """A value in Hydra's override grammar: strings quoted (paths and 'name:key' stay strings)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool | int | float):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def overrides(text: str) -> list[str]:
    """The overrides for the ConfigMap's ``launcher.yaml`` text."""
    settings = yaml.safe_load(text) or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{KEY} is not a mapping of launcher settings")
    return [f"++launcher.{k}={hydra_value(v)}" for k, v in settings.items()]


def read(client: Any, name: str = CONFIGMAP) -> list[str]:
    """Read the release's ConfigMap through a JobClient (in its namespace) and return the overrides."""
    from hydra_plugins.kubernetes_launcher._client import KubernetesError

    cm = client.get("ConfigMap", name)
    text = (cm.get("data") or {}).get(KEY)
    if text is None:
        raise KubernetesError(
            f"ConfigMap {client.namespace}/{name} has no {KEY}: is it the chart's launcherDefaults ConfigMap?"
        )
    return overrides(text)
