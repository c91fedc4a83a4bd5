"""A tenant with two installed versions of the tiny model, and its draft endpoint on 127.0.0.1 (tests only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedloop.client.ingest.runtime import TenantRuntime
from fedloop.client.release.controller import ReleaseController
from fedloop.client.serve.drafts import DraftService
from fedloop.client.serve.http import build_http_app
from fedloop.client.serve.server import HttpServer, start_http
from fedloop.client.serve.transformers_engine import TransformersEngine
from fedloop.client.store.api import InstalledVersion
from fedloop.shared.adapter import adapter_state, adapter_to_bytes, attach_lora, load_base_model
from fedloop.shared.settings import LoraSettings

LORA = LoraSettings(rank=4, alpha=8)


def install_versions(runtime: TenantRuntime, model_dir: Path, versions: tuple[str, ...]) -> None:
    """Install versions with distinct random adapters (the first one is the base model)."""
    model, _ = load_base_model(model_dir)
    state = adapter_state(attach_lora(model, LORA, seed=1))
    generator = torch.Generator().manual_seed(5)
    for index, version in enumerate(versions):
        adapter = {k: v + (0.8 * torch.randn(v.shape, generator=generator) if index else 0) for k, v in state.items()}
        runtime.store.versions.install(
            InstalledVersion(version, index, None, f"digest-{version}"), adapter_to_bytes(adapter)
        )


@dataclass
class Endpoint:
    """A running draft endpoint and what it serves."""

    runtime: TenantRuntime
    service: DraftService
    http: HttpServer
    controller: ReleaseController
    engine: TransformersEngine

    def stop(self) -> None:
        """Stop the HTTP server, then the generation worker."""
        self.http.stop()
        self.engine.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}/v1"


def start_endpoint(runtime: TenantRuntime, model_dir: Path, api_keys: list[bytes] | None = None) -> Endpoint:
    """The draft endpoint of `runtime` on a free loopback port."""
    engine = TransformersEngine(model_dir, LORA, serve=runtime.settings.serve)
    service = DraftService(runtime, engine)
    http = start_http(build_http_app(service, runtime.settings.serve.model_alias, api_keys), "127.0.0.1:0")
    return Endpoint(runtime, service, http, ReleaseController(runtime.store, runtime.settings.release), engine)


def start_serving_v0(make_tenant: Callable[..., TenantRuntime], model_dir: Path, **sections: Any) -> Endpoint:
    """A tenant (`make_tenant` fixture) whose one installed version v0 serves everyone, and its endpoint."""
    runtime = make_tenant("acme", **sections)
    install_versions(runtime, model_dir, ("v0",))
    served = start_endpoint(runtime, model_dir)
    served.controller.offer("v0", "gates passed")
    return served
