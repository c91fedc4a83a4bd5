"""Shared fixtures: a tiny model built once per session, tenant runtimes on temporary stores."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import Endpoint, start_serving_v0
from tiny_model import build_tiny_model

from fedloop.client.ingest.runtime import TenantRuntime, open_tenant
from fedloop.client.privacy.redaction import Redactor
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that start a deployment first, then other slow ones, then the rest (each module kept together):
    `make test` spreads modules over two workers (pytest-xdist, --dist loadfile), and the longest ones started
    first keep both busy to the end (the suite took 16 min in one process, 12.4 min on two workers in name
    order)."""

    def weight(item: pytest.Item) -> int:
        markers = {m.name for m in item.iter_markers()}
        return 0 if "deployment" in markers else 1 if "slow" in markers else 2

    module_weight: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        module_weight[module] = min(module_weight.get(module, 2), weight(item))
    items.sort(key=lambda item: module_weight[item.nodeid.split("::")[0]])
