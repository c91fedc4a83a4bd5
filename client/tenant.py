"""One tenant inside its ClientApp: its settings, keys, store, simulated users, and what it does each round.

`train_round` serves the round's users with the versions the release pointer
routes them to, trains the local recipe from the global version and lets the
release controller act; `evaluate_version` measures a version (held-out hit
rate, KL and forgetting gates) and offers it for release if it passes. The
ClientApp (app.py) wraps these with the sealed protocol.
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

from fedloop.client.evaluate.drift import GateResult, forgetting_gate, kl_gate
from fedloop.client.evaluate.hit_rate import hit_rate
from fedloop.client.feedback import Action, FeedbackRecorder
from fedloop.client.privacy import Redactor
from fedloop.client.release.controller import ACTOR, ReleaseController
from fedloop.client.samples.curation import dataset_version, training_examples
from fedloop.client.simulated_users import Conversation, TenantTraffic, UserJudgement
from fedloop.client.store import FeedbackStore
from fedloop.client.store_api import InstalledVersion
from fedloop.client.tenant_runtime import TenantRuntime, open_tenant
from fedloop.client.tenant_settings import TenantSettings
from fedloop.client.train.generate import generate_replies
from fedloop.client.train.recipe import run_recipe
from fedloop.shared.adapter import (AdapterState, LoraSettings, adapter_from_bytes, adapter_state, attach_lora,
                                    load_adapter_state, load_base_model)
from fedloop.shared.crypto import CryptoError, sm3_digest
from fedloop.shared.envelope import open_envelope
from fedloop.shared.keys import Identity, Keyring, key_paths, load_identity, load_public_key
from fedloop.shared.protocol import GLOBAL, NUM_EXAMPLES, global_binding
from fedloop.shared.run_layout import HQ_NAME
from fedloop.shared.settings import Settings

log = logging.getLogger(__name__)
SIMULATED_DWELL_MS = 4000  # simulated users read a draft for 4 s before deciding
HELD_OUT_BATCH = -1  # conversation batch reserved for evaluation; training rounds use batches >= 1


@dataclass(frozen=True)
class TrainOutcome:
    """What a tenant's round of local training produced (aggregates only: what may leave the tenant)."""

    examples: int
    loss: float
    served_hit_rate: float
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
    """One tenant as seen inside its ClientApp: federation settings, its own settings, keys, store, users."""

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
    def traffic(self) -> TenantTraffic:
        """This tenant's simulated users (their preferred style is hidden from training)."""
        styles = self.settings.simulation.styles
        return TenantTraffic(self.name, styles[self.index % len(styles)], self.settings.federation.seed)

    @cached_property
    def held_out(self) -> list[Conversation]:
        """Fixed evaluation prompts, never trained on."""
        return self.traffic.conversations(self.settings.simulation.eval_prompts, HELD_OUT_BATCH)

    @property
    def judgement(self) -> UserJudgement:
        """How simulated users judge drafts."""
        sim = self.settings.simulation
        return UserJudgement(sim.accept_threshold, sim.edit_threshold)

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

    def serve_round(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, global_version: str,
                    round_: int) -> float:
        """Draft replies for this round's users, each with the version the release pointer routes them to.

        Records every draft (with its model and prompt version) and outcome; leaves
        `global_version` loaded for training. Returns the hit rate of the drafts.
        """
        conversations = self.traffic.conversations(self.settings.simulation.conversations_per_round, round_)
        if not conversations:
            return 0.0
        routed = [self.release.route(self.store.pseudonym(c.user_id)) or global_version for c in conversations]
        log.info("%s round %d: %d users routed by the release pointer: %s", self.name, round_, len(routed),
                 ", ".join(f"{version} x{routed.count(version)}" for version in sorted(set(routed))))
        drafts = [""] * len(conversations)
        for version in sorted(set(routed)):
            indexes = [i for i, v in enumerate(routed) if v == version]
            load_adapter_state(model, self.adapter(version))
            replies = generate_replies(model, tokenizer, [conversations[i].prompt for i in indexes],
                                       self.settings.simulation.max_new_tokens)
            for i, reply in zip(indexes, replies):
                drafts[i] = reply
        load_adapter_state(model, self.adapter(global_version))
        recorder = FeedbackRecorder(self.runtime.pipeline)
        accepted = 0
        for conversation, draft, version in zip(conversations, drafts, routed):
            draft_id = recorder.record_draft(conversation.user_id, conversation.prompt, draft or "(empty)", version,
                                             prompt_version=self.settings.simulation.prompt_version)
            decision = self.judgement.decide(draft, conversation)
            recorder.record_outcome(draft_id, decision.action, decision.final_text, SIMULATED_DWELL_MS)
            accepted += decision.action is Action.ACCEPT
        return accepted / len(conversations)

    def gate(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, version_id: str) -> list[GateResult]:
        """Forgetting against the base model, and KL to the serving version (when one serves)."""
        gates = self.local.evaluation
        candidate = adapter_state(model)
        results = [forgetting_gate(model, tokenizer, candidate, gates.forgetting_bound)]
        current = self.release.state()
        if current is not None and current.serving not in (None, version_id):
            references = [f"{c.prompt}\n{c.preferred_reply}" for c in self.held_out]
            results.append(kl_gate(model, tokenizer, candidate, self.adapter(current.serving), references,
                                   gates.kl_bound))
        for result in results:
            self.store.record_evaluation(version_id, result.name, vars(result))
        return results

    def train_round(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, version_id: str,
                    round_: int) -> TrainOutcome:
        """Serve this round's users, train the local recipe from `version_id` on all feedback, move the release.

        The model is left holding the trained adapter; the training run is recorded in the store.
        """
        settings = self.settings
        served_hit_rate = self.serve_round(model, tokenizer, version_id, round_)
        examples = training_examples(self.store, self.local.curation)
        dataset = dataset_version(self.store)
        log.info("%s round %d: served drafts (hit rate %.2f); training from %s on %d examples (dataset %s)",
                 self.name, round_, served_hit_rate, version_id, len(examples), dataset)
        started = time.monotonic()
        report = run_recipe(model, tokenizer, examples, settings.train,
                            settings.federation.seed * 1000 + round_ * 10 + self.index)
        loss = report.sft_loss if report.sft_steps else report.dpo_loss
        self.store.record_evaluation(version_id, "training", {
            "round": round_, "method": report.method, "examples": report.examples, "loss": loss,
            "sft_losses": report.sft_losses, "dpo_losses": report.dpo_losses,
            "duration_s": time.monotonic() - started, "dataset_version": dataset})
        self.release.decide()
        return TrainOutcome(len(examples), loss, served_hit_rate, dataset)

    def evaluate_version(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase,
                         version_id: str) -> dict[str, float]:
        """Hit rate on the held-out prompts and both gates for the loaded version; offer it if it passes them."""
        metrics = hit_rate(model, tokenizer, self.held_out, self.judgement, self.settings.simulation.max_new_tokens)
        self.store.record_evaluation(version_id, "hit_rate", metrics)
        results = self.gate(model, tokenizer, version_id)
        for gate in results:
            metrics[gate.name.replace("_", "-")] = gate.value
        verdicts = ", ".join(f"{g.name} {g.value:.4f} ({'pass' if g.passed else 'REFUSE'})" for g in results)
        if all(g.passed for g in results):
            self.release.offer(version_id, f"hit rate {metrics['hit-rate']:.2f}; {verdicts}")
        else:
            self.store.audit(ACTOR, "release-refused", f"{version_id}: {verdicts}")
        metrics["gates-passed"] = int(all(g.passed for g in results))
        log.info("%s evaluated %s on %d held-out prompts: hit rate %.2f; %s", self.name, version_id,
                 metrics[NUM_EXAMPLES], metrics["hit-rate"], verdicts)
        return metrics

