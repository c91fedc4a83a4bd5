"""Shared fixtures: a tiny model built once per session, tenant runtimes on temporary stores."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import Endpoint, start_serving_v0
from tiny_model import build_tiny_model

from fedloop.client.privacy.redaction import Redactor
from fedloop.client.tenant_runtime import TenantRuntime, open_tenant
from fedloop.client.tenant_settings import TenantSection, TenantSettings
from fedloop.shared.keys import init_keys


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal LM with tokenizer and chat template, built in seconds."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def redactor() -> Redactor:
    """One Presidio redactor for the whole session (building one takes about a second)."""
    return Redactor()


@pytest.fixture()
def make_tenant(tmp_path: Path, redactor: Redactor) -> Iterator[Callable[..., TenantRuntime]]:
    """Open tenant runtimes on fresh keys and stores under tmp_path; closed after the test."""
    opened: list[TenantRuntime] = []

    def make(name: str = "acme", store_busy_timeout_s: float = 5.0, **sections: Any) -> TenantRuntime:
        keys = tmp_path / "keys"
        identity = init_keys("tenant", name, keys)
        tenant = TenantSection(
            name=name, keys_dir=str(keys), data_dir=str(tmp_path / name), store_busy_timeout_s=store_busy_timeout_s
        )
        settings = TenantSettings(tenant=tenant, **sections)
        runtime = open_tenant(settings, identity, redactor=redactor)
        opened.append(runtime)
        return runtime

    yield make
    for runtime in opened:
        runtime.close()


@pytest.fixture()
def served_v0(make_tenant: Callable[..., TenantRuntime], tiny_model_dir: Path) -> Iterator[Endpoint]:
    """The tiny model's draft endpoint on 127.0.0.1 for a tenant whose one version v0 serves everyone."""
    served = start_serving_v0(make_tenant, tiny_model_dir)
    yield served
    served.stop()
