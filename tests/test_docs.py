"""The README documents every config key the code accepts, and the laptop config sets them all."""

from __future__ import annotations

from pydantic import BaseModel

from conftest import REPO
from pipelines.config import RunConfig


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _keys(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_readme_config_reference_is_complete():
    readme = (REPO / "README.md").read_text()
    missing = [k for k in _keys(RunConfig) if f"| `{k}` |" not in readme]
    assert not missing, f"README config reference lacks: {missing}"


def test_laptop_config_sets_every_key():
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "laptop.yaml").read_text())
    for key in _keys(RunConfig):
        node = raw
        for part in key.split("."):
            assert part in node, f"configs/laptop.yaml lacks {key}"
            node = node[part]
