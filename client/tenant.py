"""One tenant inside its ClientApp: its settings, keys, store, and what it does each round.

`train_round` trains the local recipe from the global version on the
feedback the tenant's product sent (less the held-out slice);
`evaluate_version` measures a version on the tenant's own held-out finals
(offline hit rate with its interval, the hit-rate, KL and forgetting gates) and
offers it for release if no gate refuses it. The ClientApp (app.py) wraps these
with the sealed protocol. Release decisions on live traffic run where outcomes
arrive (the draft endpoint and FeedbackService, release/loop.py), not here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from flwr.app import Message
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedloop.client.evaluate.degeneration import degeneration_gate
from fedloop.client.evaluate.drift import GateResult, forgetting_gate, general_texts, kl_gate
from fedloop.client.evaluate.hit_rate import HitRate, hit_rate_gate, offline_hit_rate, reference_hit_rate
from fedloop.client.privacy import Redactor
from fedloop.client.release.controller import ACTOR, ReleaseController
from fedloop.client.samples.curation import dataset_version, training_examples
from fedloop.client.samples.held_out import Reference, held_out_references
from fedloop.client.serve.drafts import DraftService
from fedloop.client.serve.engine import DraftEngine
from fedloop.client.store import FeedbackStore
from fedloop.client.store_api import InstalledVersion
from fedloop.client.tenant_runtime import TenantRuntime, open_tenant
from fedloop.client.tenant_settings import TenantSettings
from fedloop.client.train.recipe import run_recipe
from fedloop.shared.adapter import (AdapterState, LoraSettings, adapter_from_bytes, adapter_state, attach_lora,
                                    load_adapter_state, load_base_model)
from fedloop.shared.crypto import CryptoError, sm3_digest
from fedloop.shared.envelope import open_envelope
from fedloop.shared.keys import Identity, Keyring, key_paths, load_identity, load_public_key
from fedloop.shared.protocol import GLOBAL, global_binding
from fedloop.shared.run_layout import HQ_NAME
from fedloop.shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutcome:
    """What a tenant's round of local training produced (aggregates only: what may leave the tenant)."""

    examples: int
    loss: float
    dataset_version: str


@lru_cache(maxsize=1)
def shared_model(model_path: str, lora: LoraSettings, seed: int) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The base model with a LoRA slot, loaded once per worker process and shared by its tenants."""
    model, tokenizer = load_base_model(Path(model_path))
    return attach_lora(model, lora, seed), tokenizer


@lru_cache(maxsize=1)
def _redactor() -> Redactor:
    """One Presidio redactor per process (building it costs about a second)."""
    return Redactor()


@dataclass(eq=False)
class Tenant:
    """One tenant as seen inside its ClientApp: federation settings, its own settings, keys, store."""

    index: int
    settings: Settings
    local: TenantSettings
    adapters: dict[str, AdapterState] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The tenant's name."""
        return self.local.tenant.name

    @cached_property
    def identity(self) -> Identity:
        """This tenant's own keys."""
        return load_identity(Path(self.local.tenant.keys_dir), self.name)

    @cached_property
    def hq_keyring(self) -> Keyring:
        """The only signer a tenant trusts: HQ."""
        return Keyring([load_public_key(key_paths(Path(self.local.tenant.keys_dir), HQ_NAME)["public"])])

    @cached_property
    def runtime(self) -> TenantRuntime:
        """The tenant's store and ingestion pipeline."""
        return open_tenant(self.local, self.identity, redactor=_redactor())

    @property
    def store(self) -> FeedbackStore:
        """The encrypted feedback store."""
        return self.runtime.store

    @cached_property
    def release(self) -> ReleaseController:
        """The tenant's release pointer (serving version, canary, share)."""
        return ReleaseController(self.store, self.local.release)

    @cached_property
    def drafts(self) -> DraftService:
        """The tenant's draft service (what its HTTP endpoint calls), with its own copy of the base model."""
        engine = DraftEngine(Path(self.settings.paths.model), self.settings.lora)
        return DraftService(self.runtime, engine)

    def adapter(self, version_id: str) -> AdapterState:
        """An installed version's adapter, from memory or decrypted from the store."""
        if version_id not in self.adapters:
            self.adapters[version_id] = adapter_from_bytes(self.store.installed_adapter(version_id))
        return self.adapters[version_id]

    def install_global(self, message: Message, run: str) -> tuple[int, str, PeftModel, PreTrainedTokenizerBase]:
        """Verify the sealed global version in `message`, keep it, and load it into the model.

        Returns the round, the version id, and the model with the version loaded.
        """
        record = message.content.config_records[GLOBAL]
        version_id, round_ = str(record["version"]), int(record["round"])
        opened = open_envelope(record["envelope"], self.identity, self.hq_keyring,
                               global_binding(self.name, run, round_, version_id))
        digest = sm3_digest(opened.payload).hex()
        if digest != opened.binding.details.get("digest"):
            raise CryptoError(f"global version {version_id!r} does not match the SM3 digest HQ signed")
        installed = InstalledVersion(version_id, int(opened.binding.details["version_round"]),
                                     opened.binding.details["parent"], digest)
        model, tokenizer = self.install(installed, opened.payload)
        return round_, version_id, model, tokenizer

    def install(self, installed: InstalledVersion, payload: bytes) -> tuple[PeftModel, PreTrainedTokenizerBase]:
        """Keep a received version in the store and in memory (with the serving and canary ones) and load it."""
        model, tokenizer = shared_model(self.settings.paths.model, self.settings.lora, self.settings.federation.seed)
        state = adapter_from_bytes(payload)
        load_adapter_state(model, state)
        self.store.install_version(installed, payload)
        current = self.release.state()
        keep = {installed.version_id} | ({current.serving, current.canary} if current else set())
        self.adapters = {v: a for v, a in self.adapters.items() if v in keep}
        self.adapters[installed.version_id] = state
        return model, tokenizer

    def held_out(self) -> list[Reference]:
        """The newest held-out finals of the tenant's own users (never trained on)."""
        gates = self.local.evaluation
        return held_out_references(self.store, gates.held_out_share, gates.max_held_out)

    def gate(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, version_id: str,
             held_out: list[Reference], candidate_hits: HitRate) -> list[GateResult]:
        """Hit rate and degenerate drafts against the serving version (or the base model), forgetting, and KL to
        the serving version."""
        gates = self.local.evaluation
        candidate = adapter_state(model)
        current = self.release.state()
        serving = current.serving if current is not None and current.serving not in (None, version_id) else None
        serving_state = self.adapter(serving) if serving else None
        reference = reference_hit_rate(model, tokenizer, held_out, serving_state, gates.hit_similarity,
                                       gates.max_new_tokens)  # the hit-rate gate itself needs min_held_out
        results = [hit_rate_gate(candidate_hits, reference, gates.min_held_out, gates.confidence),
                   degeneration_gate(candidate_hits.drafts, reference.drafts, gates.degenerate_bound),
                   forgetting_gate(model, tokenizer, candidate, gates.forgetting_bound)]
        if serving_state is not None:
            references = [f"{r.prompt}\n{r.final}" for r in held_out] + general_texts()
            results.append(kl_gate(model, tokenizer, candidate, serving_state, references, gates.kl_bound))
        for result in results:
            self.store.record_evaluation(version_id, result.name, vars(result))
        return results

    def train_round(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, version_id: str,
                    round_: int) -> TrainOutcome:
        """Train the local recipe from `version_id` on the product's feedback (less the held-out slice).

        The model is left holding the trained adapter; the training run is recorded in the store.
        """
        settings = self.settings
        examples = training_examples(self.store, self.local.curation, self.local.evaluation.held_out_share)
        dataset = dataset_version(self.store)
        log.info("%s round %d: training from %s on %d examples (dataset %s)", self.name, round_, version_id,
                 len(examples), dataset)
        started = time.monotonic()
        report = run_recipe(model, tokenizer, examples, settings.train,
                            settings.federation.seed * 1000 + round_ * 10 + self.index)
        loss = report.sft_loss if report.sft_steps else report.dpo_loss
        self.store.record_evaluation(version_id, "training", {
            "round": round_, "method": report.method, "examples": report.examples, "loss": loss,
            "sft_losses": report.sft_losses, "dpo_losses": report.dpo_losses,
            "duration_s": time.monotonic() - started, "dataset_version": dataset})
        return TrainOutcome(len(examples), loss, dataset)

    def evaluate_version(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase,
                         version_id: str) -> dict[str, float]:
        """Offline hit rate on the held-out finals and the gates for the loaded version; offer it unless refused."""
        gates = self.local.evaluation
        held_out = self.held_out()
        hits = offline_hit_rate(model, tokenizer, held_out, gates.hit_similarity, gates.max_new_tokens)
        metrics = hits.metrics()
        self.store.record_evaluation(version_id, "hit_rate", metrics)
        results = self.gate(model, tokenizer, version_id, held_out, hits)
        for gate in results:
            metrics[gate.name.replace("_", "-")] = gate.value
            if gate.name == "kl_to_serving":
                metrics["kl-bound"] = gate.bound  # HQ's report draws each tenant's bound
        low, high = hits.interval()
        measured = (f"offline hit rate {hits.rate:.2f} [{low:.2f}, {high:.2f}] on {hits.count} held-out finals"
                    if hits.count else "no held-out finals yet")
        verdicts = ", ".join(f"{g.name} {g.value:.4f} ({g.verdict})" for g in results)
        if all(g.passed for g in results):
            self.release.offer(version_id, f"{measured}; {verdicts}")
        else:
            self.store.audit(ACTOR, "release-refused", f"{version_id}: {verdicts}")
        metrics["gates-passed"] = int(all(g.passed for g in results))
        log.info("%s evaluated %s: %s; %s", self.name, version_id, measured, verdicts)
        return metrics
