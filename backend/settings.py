"""Settings of the backend: HYPERSERVICE_* environment variables, optionally a TOML config file.

Every knob an operator may turn lives here, with its default and what it does. Environment variables
win over the config file (`$HYPERSERVICE_DATA_DIR/config.toml`, or the file named by
`HYPERSERVICE_CONFIG`).
"""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from backend.haproxy import MAX_SLOTS

DEFAULT_LB_IMAGE = "haproxy:lts-alpine"
MAX_SUBNET_PREFIX = 27  # the smallest per-service subnet: 29 usable addresses
# Built offline by scripts/up (images/build.sh) when the configured balancer image cannot be pulled:
# Debian's haproxy laid out like the official image.
FALLBACK_LB_IMAGE = "hyperservice/haproxy:debian"
# The demo web image scripts/up builds offline (busybox httpd on port 80, answering with its hostname);
# the console's create form names it as its example.
DEMO_IMAGE = "hyperservice/demo-web:1"
# Each balancer has max_replicas + 1 server slots (one spare for a rolling update) and at most MAX_SLOTS.
MAX_REPLICAS_LIMIT = MAX_SLOTS - 1


def _config_file() -> Path:
    named = os.environ.get("HYPERSERVICE_CONFIG")
    if named:
        return Path(named)
    data_dir = os.environ.get("HYPERSERVICE_DATA_DIR", "").strip() or platformdirs.user_data_dir("hyperservice")
    return Path(data_dir) / "config.toml"


class Settings(BaseSettings):
    """The backend's settings; each field is read from `HYPERSERVICE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="HYPERSERVICE_", extra="ignore")

    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("hyperservice")))
    """Where the SQLite state file (`state.db`) lives."""

    lb_image: str = DEFAULT_LB_IMAGE
    """The HAProxy image each service's load balancer runs (pulled on first use)."""

    lb_fallback_image: str = FALLBACK_LB_IMAGE
    """The balancer image used while `lb_image` is not on the engine (scripts/up builds it offline)."""

    address_pool: str = "127.77.0.0/16"
    """CIDR the per-service addresses (`IP`) are taken from; each service gets its own address."""

    network_pool: str = "10.213.0.0/16"
    """CIDR the per-service networks are carved from (one subnet per service, sized for
    `max_replicas` plus a rolling update's extra replica and the balancers). Outside Docker's own
    default pools, so services never use up the addresses other networks on the engine need."""

    fip_pool: str = ""
    """Comma-separated host addresses that may be attached to services as floating IPs."""

    max_replicas: int = Field(default=100, ge=1)
    """The largest `Replicas` a service may ask for (at most MAX_REPLICAS_LIMIT: the balancer's slots)."""

    resync_seconds: float = Field(default=30.0, gt=0)
    """How often the reconciler re-reads every service, to catch what Docker's event stream missed."""

    replace_down_after: float = Field(default=60.0, gt=0)
    """Seconds a replica may stay DOWN (failing its health check) before it is replaced."""

    rollout_parallelism: int = Field(default=1, ge=1, le=MAX_REPLICAS_LIMIT)
    """How many new replicas a rolling update (an Image change, a rollback) starts at once, as
    `docker service update --update-parallelism` does: that many run above `Replicas` while they
    start (the balancers' spare slots permitting, see `max_replicas`); an old replica is taken out as
    each new one is ready, so never fewer ready replicas than asked for. 1 rolls one at a time."""

    workers: int = Field(default=4, ge=1)
    """How many services the reconciler works on at once."""

    pids_limit: int = Field(default=1024, ge=16)
    """The most processes (and threads) one replica may run: a fork bomb stops there."""

    log_max_size: str = Field(default="10m", pattern=r"^[1-9][0-9]*[kmg]?$")
    """Size at which a replica's log file (json-file driver) is rotated, as Docker writes it: 10m, 500k."""

    log_max_file: int = Field(default=3, ge=1)
    """How many rotated log files a replica keeps (so one replica's logs take at most size × files)."""

    engine: Literal["docker", "swarm", "auto"] = "auto"
    """What runs the services: `docker` (every replica a container on the one engine at DOCKER_HOST),
    `swarm` (every service a Docker Swarm service on the swarm DOCKER_HOST manages) or `auto` (swarm
    when the engine at DOCKER_HOST is an active swarm manager, else docker; docker when it does not
    answer at start)."""

    orphan_grace_seconds: float = Field(default=3600.0, ge=0)
    """Seconds objects of this installation that the state file does not know (e.g. after restoring an
    older state.db) are reported before they are removed; removed only if still unknown by then."""

    @field_validator("data_dir", mode="before")
    @classmethod
    def _empty_data_dir_is_the_default(cls, value: object) -> object:
        # `HYPERSERVICE_DATA_DIR=` (set but empty, e.g. an unset variable expanded by a shell) would
        # otherwise be Path(""), the current directory: a state file nobody expects, wherever one stands.
        if isinstance(value, str) and not value.strip():
            return Path(platformdirs.user_data_dir("hyperservice"))
        return value

    @field_validator("address_pool")
    @classmethod
    def _valid_pool(cls, value: str) -> str:
        ipaddress.ip_network(value, strict=False)
        return value

    @field_validator("network_pool")
    @classmethod
    def _valid_network_pool(cls, value: str) -> str:
        network = ipaddress.ip_network(value, strict=False)
        if network.version != 4:
            raise ValueError("must be an IPv4 CIDR (Docker bridge networks are IPv4 here)")
        return str(network)

    @property
    def subnet_prefix(self) -> int:
        """The prefix length of one service's subnet: room for every replica during a rolling
        update (max_replicas + 1), both balancers, the gateway, and the network/broadcast addresses;
        at least a /27, so a limit raised later still fits services made before (up to 25 replicas)."""
        needed = self.max_replicas + 1 + 2 + 1 + 2
        return min(MAX_SUBNET_PREFIX, 32 - math.ceil(math.log2(needed)))

    def check_network_pool(self) -> None:
        """Refuse a pool too small for even one service's subnet (said at start, not at first create)."""
        pool = ipaddress.ip_network(self.network_pool)
        if pool.prefixlen > self.subnet_prefix:
            raise ValueError(
                f"HYPERSERVICE_NETWORK_POOL {pool} is smaller than one service's subnet "
                f"(/{self.subnet_prefix} for HYPERSERVICE_MAX_REPLICAS={self.max_replicas})"
            )

    @field_validator("max_replicas")
    @classmethod
    def _within_slots(cls, value: int) -> int:
        if value > MAX_REPLICAS_LIMIT:
            raise ValueError(
                f"must be at most {MAX_REPLICAS_LIMIT}: a balancer has at most {MAX_SLOTS} server slots, "
                "one of them kept spare for rolling updates"
            )
        return value

    @property
    def fip_addresses(self) -> list[str]:
        return [part.strip() for part in self.fip_pool.split(",") if part.strip()]

    @property
    def state_file(self) -> Path:
        return self.data_dir / "state.db"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=_config_file()))


def describe_settings_error(exc: ValidationError) -> str:
    """One line per bad setting, named as the operator sets it: 'HYPERSERVICE_MAX_REPLICAS: must be ...'."""
    problems = []
    for error in exc.errors():
        name = "HYPERSERVICE_" + "_".join(str(part) for part in error["loc"]).upper()
        reason = str((error.get("ctx") or {}).get("error") or error["msg"])
        problems.append(f"{name}: {reason} (got {error.get('input')!r})")
    return "invalid settings: " + "; ".join(problems)

