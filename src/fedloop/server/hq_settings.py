"""HQ's own settings (`configs/hq.toml`): where its home and certificates are, where it listens."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from fedloop.shared.settings import Section, is_host_port, load_sections, require


class HQSection(Section):
    """The SuperLink HQ runs and the endpoints it serves."""

    PATH_KEYS = ("home", "certs")

    home: str = Field(
        "hq-home", description="keys/ (HQ's key pair, tenants' public keys), hq/ (registry), superlink.db, flwr/"
    )
    certs: str = Field("certs", description="ca.crt, superlink.crt, superlink.key (`fedloop certs` makes test ones)")
    host: str = Field(
        "127.0.0.1", description="address the public gateway (nginx, Fleet API only) listens on (0.0.0.0 for all)"
    )
    port: int = Field(9300, ge=1, le=65535, description="the gateway's port: tenants' SuperNodes connect here")
    superlink_port: int = Field(
        9302, ge=1, le=65535, description="the SuperLink itself, on 127.0.0.1 only: Control API for HQ's operators"
    )
    metrics_address: str = Field("127.0.0.1:9301", description='host:port of HQ\'s /metrics; "" = no endpoint')

    @model_validator(mode="after")
    def _check_hq(self) -> Self:
        """This section's own rules beyond each key's range (ConfigError names the key and what is allowed)."""
        require(self.superlink_port != self.port, "hq.superlink_port", "a port other than hq.port")
        require(
            self.metrics_address == "" or is_host_port(self.metrics_address),
            "hq.metrics_address",
            'host:port (e.g. 127.0.0.1:9301), or "" for no endpoint',
        )
        return self


class HQSettings(Section):
    """Everything `fedloop hq` and `fedloop run` need besides the federation settings."""

    hq: HQSection = Field(default_factory=HQSection, description=HQSection.__doc__)

    @property
    def home(self) -> Path:
        """HQ's home directory."""
        return Path(self.hq.home)

    @property
    def certs(self) -> Path:
        """HQ's certificate directory."""
        return Path(self.hq.certs)


def load_hq_settings(path: Path) -> HQSettings:
    """Read and validate HQ's TOML."""
    return load_sections(HQSettings, path)
