"""Personalisation: the tenant's own candidate of a global version (a few local steps, or its own B matrices)."""

from __future__ import annotations

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedloop.client.store.api import InstalledVersion
from fedloop.client.tenant.training import LOCAL_B, Training
from fedloop.client.train.personalise import local_steps, personal_version, with_local_part
from fedloop.shared.adapter import adapter_from_bytes, adapter_state, adapter_to_bytes, load_adapter_state
from fedloop.shared.crypto import sm3_digest


class Personalising(Training):
    """A tenant's job of building its personalised candidate (it trains on the same examples)."""

    def personalise(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, version_id: str) -> str | None:
        """Build, install and load the tenant's personalised candidate of global version `version_id` (loaded in
        `model`); its id, or None when personalisation is off or has nothing to adapt from yet."""
        personalise = self.settings.personalise
        global_state = adapter_state(model)
        if personalise.method == "local_steps":
            examples = self.training_examples()
            if not examples:
                return None
            local_steps(
                model,
                tokenizer,
                examples,
                self.federation.train,
                personalise.steps,
                self.federation.federation.seed * 1000 + 7 + self.index,
            )
            state = adapter_state(model)
        elif personalise.method == "local_b" and (kept := self.store.versions.local_part(LOCAL_B)) is not None:
            state = with_local_part(global_state, adapter_from_bytes(kept))
            load_adapter_state(model, state)
        else:
            return None
        installed = self.store.versions.installed()
        round_ = next((v.round for v in installed if v.version_id == version_id), 0)
        payload = adapter_to_bytes(state)
        personal = InstalledVersion(personal_version(version_id), round_, version_id, sm3_digest(payload).hex())
        self.store.versions.install(personal, payload)
        self.adapters[personal.version_id] = state
        return personal.version_id
