from .model_zoo import get_config_file

__all__ = ["get_config_file"]
