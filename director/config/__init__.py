"""The daemon's configuration: load_config(path) or parse_config(text)."""

from director.config.model import (
    Config,
    ControlSettings,
    DaemonSettings,
    IpvsSettings,
    LogLevel,
    MetricsSettings,
    OnFailure,
    RealServer,
    RealServerId,
    SorryServer,
    VirtualServer,
)
from director.config.parse import (
    ConfigError,
    load_config,
    parse_config,
    parse_endpoint,
)
from director.ipvs.model import service_label

__all__ = [
    "Config",
    "ConfigError",
    "ControlSettings",
    "DaemonSettings",
    "IpvsSettings",
    "LogLevel",
    "MetricsSettings",
    "OnFailure",
    "RealServer",
    "RealServerId",
    "SorryServer",
    "VirtualServer",
    "load_config",
    "parse_config",
    "parse_endpoint",
    "service_label",
]
