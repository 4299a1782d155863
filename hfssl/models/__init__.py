from hfssl.models.presets import PRESETS, build_config, parse_config_overrides

__all__ = ["PRESETS", "build_config", "parse_config_overrides"]
