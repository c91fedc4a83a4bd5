"""The tenant's Flower ClientApp.

train:    verify and install the global version, serve it to this round's
          simulated users (recording their feedback), train LoRA locally on
          all feedback, reply with the sealed delta and its sample count.
evaluate: verify and install the global version, report its hit rate on the
          tenant's held-out prompts.
query enrol: tell HQ which tenant and key this node is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedloop.client.feedback import Action, FeedbackRecorder
from fedloop.client.privacy import Redactor
from fedloop.client.simulated_users import Conversation, TenantTraffic, UserJudgement
from fedloop.client.samples.curation import training_examples
from fedloop.client.store import FeedbackStore
from fedloop.client.store_api import InstalledVersion
from fedloop.client.tenant_runtime import TenantRuntime, open_tenant
from fedloop.client.tenant_settings import TenantSection, TenantSettings
from fedloop.client.train.generate import generate_replies
from fedloop.client.train.recipe import run_recipe
from fedloop.client.evaluate.drift import forgetting_gate, kl_gate
from fedloop.client.evaluate.hit_rate import hit_rate
from fedloop.shared.adapter import AdapterState, LoraSettings, adapter_from_bytes, adapter_state, adapter_to_bytes, attach_lora, load_adapter_state, load_base_model
from fedloop.shared.crypto import CryptoError, sm3_digest
from fedloop.shared.envelope import open_envelope, seal
from fedloop.shared.keys import Identity, Keyring, load_identity, load_public_key, key_paths
from fedloop.shared.logs import configure_logging
from fedloop.shared.protocol import ENROL, GLOBAL, METRICS, NUM_EXAMPLES, delta_binding, delta_content, global_binding
from fedloop.shared.run_layout import HQ_NAME, RunLayout
from fedloop.shared.settings import Settings, load_settings

log = logging.getLogger(__name__)
SIMULATED_DWELL_MS = 4000  # simulated users read a draft for 4 s before deciding
HELD_OUT_BATCH = -1  # conversation batch reserved for evaluation; training rounds use batches >= 1


@lru_cache(maxsize=1)
def _model(model_path: str, lora: LoraSettings, seed: int) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The base model with a LoRA slot, loaded once per worker process and shared by its tenants."""
    model, tokenizer = load_base_model(Path(model_path))
    return attach_lora(model, lora, seed), tokenizer


@lru_cache(maxsize=1)
def _redactor() -> Redactor:
    """One Presidio redactor per process (building it costs about a second)."""
    return Redactor()


@dataclass(eq=False)
class Tenant:
    """One tenant's keys, store and simulated users, as seen inside its ClientApp."""

    name: str
    index: int
    settings: Settings
    layout: RunLayout
    serving_adapter: AdapterState | None = None

    @cached_property
    def identity(self) -> Identity:
        """This tenant's own keys."""
        return load_identity(self.layout.keys, self.name)

    @cached_property
    def hq_keyring(self) -> Keyring:
        """The only signer a tenant trusts: HQ."""
        return Keyring([load_public_key(key_paths(self.layout.keys, HQ_NAME)["public"])])

    @cached_property
    def runtime(self) -> TenantRuntime:
        """The tenant's store and ingestion pipeline (default tenant settings)."""
        settings = TenantSettings(tenant=TenantSection(self.name, str(self.layout.keys),
                                                       str(self.layout.tenant(self.name))))
        return open_tenant(settings, self.identity, redactor=_redactor())

    @property
    def store(self) -> FeedbackStore:
        """The encrypted feedback store."""
        return self.runtime.store

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
        model, tokenizer = _model(self.settings.paths.model, self.settings.lora, self.settings.federation.seed)
        load_adapter_state(model, adapter_from_bytes(opened.payload))
        installed = InstalledVersion(version_id, int(opened.binding.details["version_round"]),
                                     opened.binding.details["parent"], digest)
        self.store.install_version(installed, opened.payload)
        return round_, version_id, model, tokenizer

    def serve_round(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, version_id: str, round_: int) -> float:
        """Draft replies for this round's users with `version_id` and record what they did; returns the hit rate."""
        recorder = FeedbackRecorder(self.runtime.pipeline)
        conversations = self.traffic.conversations(self.settings.simulation.conversations_per_round, round_)
        drafts = generate_replies(model, tokenizer, [c.prompt for c in conversations],
                                  self.settings.simulation.max_new_tokens)
        accepted = 0
        for conversation, draft in zip(conversations, drafts):
            draft_id = recorder.record_draft(conversation.user_id, conversation.prompt, draft or "(empty)", version_id)
            decision = self.judgement.decide(draft, conversation)
            recorder.record_outcome(draft_id, decision.action, decision.final_text, SIMULATED_DWELL_MS)
            accepted += decision.action is Action.ACCEPT
        return accepted / len(conversations)


@lru_cache(maxsize=None)
def _tenant_at(name: str, index: int, settings: Settings, layout: RunLayout) -> Tenant:
    return Tenant(name, index, settings, layout)


TenantResolver = Callable[[Context], Tenant]


def simulated_tenants(settings: Settings, layout: RunLayout) -> TenantResolver:
    """Simulation: each node plays the tenant of its partition id, all in one run directory."""
    def resolve(context: Context) -> Tenant:
        configure_logging()
        index = int(context.node_config["partition-id"])
        return _tenant_at(settings.federation.tenants[index], index, settings, layout)
    return resolve


def deployed_tenant(context: Context) -> Tenant:
    """Deployment: the SuperNode's node config names the tenant, its home directory and its settings file.

    `fedloop tenant up` sets `tenant`, `home` (keys/ and tenants/<tenant>/ inside) and `settings`.
    """
    configure_logging()
    config = context.node_config
    missing = [k for k in ("tenant", "home", "settings") if k not in config]
    if missing:
        raise ValueError(f"SuperNode node config lacks {missing}: start it with `fedloop tenant up`")
    settings = load_settings(Path(str(config["settings"])))
    name = str(config["tenant"])
    index = settings.federation.tenants.index(name) if name in settings.federation.tenants else 0
    return _tenant_at(name, index, settings, RunLayout(Path(str(config["home"]))))


def build_client_app(tenant_for: TenantResolver) -> ClientApp:
    """The tenant's ClientApp; `tenant_for` says which tenant a node is (simulation or deployment)."""
    app = ClientApp()

    @app.query(ENROL)
    def enrol(message: Message, context: Context) -> Message:
        tenant = tenant_for(context)
        claim = ConfigRecord({"tenant": tenant.name, "key_id": tenant.identity.public.key_id})
        return Message(RecordDict({ENROL: claim}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        tenant = tenant_for(context)
        settings, run = tenant.settings, tenant.settings.federation.run_name
        round_, version_id, model, tokenizer = tenant.install_global(message, run)
        served_hit_rate = tenant.serve_round(model, tokenizer, version_id, round_)
        examples = training_examples(tenant.store, tenant.runtime.settings.curation)
        log.info("%s round %d: served %d drafts with %s (hit rate %.2f); training on %d examples",
                 tenant.name, round_, settings.simulation.conversations_per_round, version_id,
                 served_hit_rate, len(examples))
        report = run_recipe(model, tokenizer, examples, settings.train,
                            settings.federation.seed * 1000 + round_ * 10 + tenant.index)
        payload = adapter_to_bytes(adapter_state(model))
        envelope = seal(payload, delta_binding(tenant.name, run, round_, version_id, len(examples)),
                        tenant.identity, tenant.hq_keyring.by_name("hq", HQ_NAME))
        return Message(delta_content(envelope, {NUM_EXAMPLES: len(examples), "train-loss": report.sft_loss if report.sft_steps else report.dpo_loss,
                                                "served-hit-rate": served_hit_rate}), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        tenant = tenant_for(context)
        settings, run = tenant.settings, tenant.settings.federation.run_name
        serving = tenant.serving_adapter
        _, version_id, model, tokenizer = tenant.install_global(message, run)
        metrics = hit_rate(model, tokenizer, tenant.held_out, tenant.judgement, settings.simulation.max_new_tokens)
        tenant.store.record_evaluation(version_id, "hit_rate", metrics)
        gates = tenant.runtime.settings.evaluation
        candidate = adapter_state(model)
        references = [f"{c.prompt}\n{c.preferred_reply}" for c in tenant.held_out]
        results = [forgetting_gate(model, tokenizer, candidate, gates.forgetting_bound)]
        if serving is not None:
            results.append(kl_gate(model, tokenizer, candidate, serving, references, gates.kl_bound))
        for gate in results:
            tenant.store.record_evaluation(version_id, gate.name, vars(gate))
            metrics[gate.name.replace("_", "-")] = gate.value
        tenant.serving_adapter = candidate
        log.info("%s evaluated %s on %d held-out prompts: hit rate %.2f; %s", tenant.name, version_id,
                 metrics[NUM_EXAMPLES], metrics["hit-rate"],
                 ", ".join(f"{g.name} {g.value:.4f} ({'pass' if g.passed else 'REFUSE'})" for g in results))
        return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=message)

    return app
