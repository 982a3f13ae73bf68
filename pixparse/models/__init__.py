from pixparse.models.config import ImageEncoderConfig, ModelConfig, TextDecoderConfig
from pixparse.models.build import create_model
from pixparse.models.cruller import Cruller
from pixparse.models.registry import get_model_config, list_presets
