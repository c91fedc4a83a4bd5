"""Installing a global version: verify HQ's sealed envelope and digest, keep it in the store, load it."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from flwr.app import Message
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedloop.client.store.api import InstalledVersion
from fedloop.client.tenant.core import TenantCore
from fedloop.shared.adapter import (
    CPU_FLOAT32,
    Placement,
    adapter_from_bytes,
    attach_lora,
    load_adapter_state,
    load_base_model,
)
from fedloop.shared.crypto import CryptoError, sm3_digest
from fedloop.shared.envelope import open_envelope
from fedloop.shared.protocol import GLOBAL, global_binding, message_round, sealed_envelope
from fedloop.shared.settings import LoraSettings


@lru_cache(maxsize=1)
def shared_model(
    model_path: str, lora: LoraSettings, seed: int, placement: Placement = CPU_FLOAT32
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The base model with a LoRA slot, loaded once per worker process and shared by its tenants."""
    model, tokenizer = load_base_model(Path(model_path), placement)
    return attach_lora(model, lora, seed), tokenizer


class Installing(TenantCore):
    """A tenant's job of receiving global versions."""

    def install_global(self, message: Message, run: str) -> tuple[int, str, PeftModel, PreTrainedTokenizerBase]:
        """Verify the sealed global version in `message`, keep it, and load it into the model.

        Returns the round, the version id, and the model with the version loaded.
        """
        record = message.content.config_records[GLOBAL]
        version_id, round_ = str(record["version"]), message_round(record)
        opened = open_envelope(
            sealed_envelope(message.content),
            self.identity,
            self.hq_keyring,
            global_binding(self.name, run, round_, version_id),
        )
        digest = sm3_digest(opened.payload).hex()
        if digest != opened.binding.details.get("digest"):
            raise CryptoError(f"global version {version_id!r} does not match the SM3 digest HQ signed")
        installed = InstalledVersion(
            version_id, int(opened.binding.details["version_round"]), opened.binding.details["parent"], digest
        )
        model, tokenizer = self.install(installed, opened.payload)
        return round_, version_id, model, tokenizer

    def install(self, installed: InstalledVersion, payload: bytes) -> tuple[PeftModel, PreTrainedTokenizerBase]:
        """Keep a received version in the store and in memory (with the serving and canary ones) and load it."""
        model, tokenizer = shared_model(
            self.federation.paths.model, self.federation.lora, self.federation.federation.seed, self.placement
        )
        state = adapter_from_bytes(payload)
        load_adapter_state(model, state)
        self.store.versions.install(installed, payload)
        current = self.release.state()
        keep = {installed.version_id} | ({current.serving, current.canary} if current else set())
        self.adapters = {v: a for v, a in self.adapters.items() if v in keep}
        self.adapters[installed.version_id] = state
        return model, tokenizer
