"""Model presets: JSON files in pixparse/models/presets/, looked up by name or path."""
import json
import os
from importlib import resources

from pixparse.models.config import ModelConfig

_PRESET_PACKAGE = "pixparse.models.presets"


def list_presets() -> list[str]:
    """Names of the built-in presets."""
    files = resources.files(_PRESET_PACKAGE).iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


def get_model_config(name_or_path: str) -> ModelConfig:
    """Load a preset by registry name or from a JSON file path."""
    if name_or_path.endswith(".json") or os.path.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise ValueError(f"--task.model_name: preset file {name_or_path!r} does not exist")
        with open(name_or_path) as f:
            return ModelConfig.from_dict(json.load(f))
    presets = list_presets()
    if name_or_path not in presets:
        raise ValueError(
            f"--task.model_name: unknown preset {name_or_path!r}; choose one of {presets} "
            f"or pass a preset JSON path"
        )
    text = resources.files(_PRESET_PACKAGE).joinpath(name_or_path + ".json").read_text()
    return ModelConfig.from_dict(json.loads(text))
