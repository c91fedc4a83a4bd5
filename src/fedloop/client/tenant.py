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

from fedloop.client.evaluate.candidates import Assessment, better_candidate
from fedloop.client.evaluate.degeneration import degeneration_gate
from fedloop.client.evaluate.drift import GateResult, forgetting_gate, general_texts, kl_gate
from fedloop.client.evaluate.hit_rate import HitRate, hit_rate_gate, offline_hit_rate, reference_hit_rate
from fedloop.client.ingest.runtime import TenantRuntime, open_tenant
from fedloop.client.privacy.redaction import Redactor
from fedloop.client.release.controller import ACTOR, ReleaseController
from fedloop.client.samples.curation import dataset_version, training_examples
from fedloop.client.samples.held_out import Reference, held_out_references
from fedloop.client.serve.drafts import DraftService
from fedloop.client.serve.transformers_engine import TransformersEngine
from fedloop.client.store import FeedbackStore
from fedloop.client.store.api import BASE_VERSION, EvaluationKind, InstalledVersion, TrainingExample
from fedloop.client.tenant_settings import TenantSettings
from fedloop.client.train.personalise import local_part, local_steps, personal_version, shared_part, with_local_part
from fedloop.client.train.recipe import run_recipe
from fedloop.shared.adapter import (
    CPU_FLOAT32,
    AdapterState,
    Placement,
    adapter_from_bytes,
    adapter_state,
    adapter_to_bytes,
    attach_lora,
    load_adapter_state,
    load_base_model,
)
from fedloop.shared.crypto import CryptoError, sm3_digest
from fedloop.shared.envelope import open_envelope
from fedloop.shared.keys import Identity, Keyring, key_paths, load_identity, load_public_key
from fedloop.shared.protocol import DECLINED, GLOBAL, global_binding, message_round, sealed_envelope
from fedloop.shared.run_layout import HQ_NAME
from fedloop.shared.settings import LoraSettings, Settings

log = logging.getLogger(__name__)
LOCAL_B = "lora_B"  # the name the tenant keeps its own B matrices under ("local_b" personalisation)


@dataclass(frozen=True)
class TrainOutcome:
    """What a tenant's round of local training produced (aggregates only: what may leave the tenant)."""

    examples: int
    loss: float
    dataset_version: str


@lru_cache(maxsize=1)
def shared_model(
    model_path: str, lora: LoraSettings, seed: int, placement: Placement = CPU_FLOAT32
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The base model with a LoRA slot, loaded once per worker process and shared by its tenants."""
    model, tokenizer = load_base_model(Path(model_path), placement)
    return attach_lora(model, lora, seed), tokenizer


@lru_cache(maxsize=1)
def _redactor() -> Redactor:
    """One Presidio redactor per process (building it costs about a second)."""
    return Redactor()


@dataclass(eq=False)
class Tenant:
    """One tenant as seen inside its ClientApp: the federation's settings, its own settings, keys, store."""

    index: int
    federation: Settings  # the federation's settings, as HQ shares them
    settings: TenantSettings  # this tenant's own settings (its TOML)
    adapters: dict[str, AdapterState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.settings.personalise.method == "local_b" and self.federation.aggregation.method != "fedavg":
            raise ValueError(
                f'tenant {self.settings.tenant.name!r}: personalise.method = "local_b" keeps the B matrices at the '
                f"tenant and shares A, which HQ must average; the federation's aggregation.method is "
                f'{self.federation.aggregation.method!r}, which re-factorises B·A. Set aggregation.method = "fedavg" '
                f'in the federation TOML, or personalise.method = "local_steps" in the tenant\'s TOML'
            )

    @cached_property
    def placement(self) -> Placement:
        """Where this tenant's models live and in which precision (`[train] device` and `dtype`)."""
        return Placement.of(self.federation.train.device, self.federation.train.dtype)

    @property
    def name(self) -> str:
        """The tenant's name."""
        return self.settings.tenant.name

    @cached_property
    def identity(self) -> Identity:
        """This tenant's own keys."""
        return load_identity(Path(self.settings.tenant.keys_dir), self.name)

    @cached_property
    def hq_keyring(self) -> Keyring:
        """The only signer a tenant trusts: HQ."""
        return Keyring([load_public_key(key_paths(Path(self.settings.tenant.keys_dir), HQ_NAME)["public"])])

    @cached_property
    def runtime(self) -> TenantRuntime:
        """The tenant's store and ingestion pipeline."""
        return open_tenant(self.settings, self.identity, redactor=_redactor())

    @property
    def store(self) -> FeedbackStore:
        """The encrypted feedback store."""
        return self.runtime.store

    @cached_property
    def release(self) -> ReleaseController:
        """The tenant's release pointer (serving version, canary, share)."""
        return ReleaseController(self.store, self.settings.release)

    @cached_property
    def drafts(self) -> DraftService:
        """The tenant's draft service (what its HTTP endpoint calls), with its own copy of the base model."""
        engine = TransformersEngine(
            Path(self.federation.paths.model), self.federation.lora, self.placement, self.settings.serve
        )
        return DraftService(self.runtime, engine)

    def adapter(self, version_id: str) -> AdapterState:
        """An installed version's adapter, from memory or decrypted from the store."""
        if version_id not in self.adapters:
            self.adapters[version_id] = adapter_from_bytes(self.store.versions.adapter(version_id))
        return self.adapters[version_id]

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

    def new_samples(self) -> int:
        """Admitted samples since the newest global version was installed here: what a continuous run's schedule
        asks (samples/held_out.py's slice included: the count only triggers a round)."""
        return self.store.samples.count_admitted_since(self.store.versions.last_installed_ms() or 0)

    def held_out(self, version_id: str) -> list[Reference]:
        """The newest held-out finals of the tenant's own users (never trained on), less the accepted drafts of
        `version_id` and of the serving version (or the base model) it is compared with: neither side is scored on
        its own greedy output."""
        gates = self.settings.evaluation
        current = self.release.state()
        serving = current.serving if current is not None and current.serving else BASE_VERSION
        compared = frozenset({version_id, serving})
        return held_out_references(self.store, gates.max_held_out, compared)

    def gate(
        self,
        model: PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        version_id: str,
        held_out: list[Reference],
        candidate_hits: HitRate,
    ) -> list[GateResult]:
        """Hit rate and degenerate drafts against the serving version (or the base model), forgetting, and KL to
        the serving version."""
        gates = self.settings.evaluation
        candidate = adapter_state(model)
        current = self.release.state()
        serving = current.serving if current is not None and current.serving not in (None, version_id) else None
        serving_state = self.adapter(serving) if serving else None
        reference = reference_hit_rate(
            model, tokenizer, held_out, serving_state, gates.hit_similarity, self.settings.held_out_tokens
        )  # the hit-rate gate itself needs min_held_out
        results = [
            hit_rate_gate(candidate_hits, reference, gates.min_held_out, gates.confidence),
            degeneration_gate(candidate_hits.drafts, reference.drafts, gates.degenerate_bound),
            forgetting_gate(model, tokenizer, candidate, gates.forgetting_bound),
        ]
        if serving_state is not None:
            references = [f"{r.prompt}\n{r.final}" for r in held_out] + general_texts()
            results.append(kl_gate(model, tokenizer, candidate, serving_state, references, gates.kl_bound))
        for result in results:
            self.store.versions.record_evaluation(version_id, result.name, vars(result))
        return results

    def train_round(
        self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, version_id: str, round_: int
    ) -> TrainOutcome:
        """Train the local recipe from `version_id` on the product's feedback (less the held-out slice).

        The model is left holding what leaves the tenant: the trained adapter, or under "local_b" personalisation
        its trained A with the global B (its B is kept in the store). The training run is recorded in the store.
        """
        federation = self.federation
        examples = self.training_examples()
        dataset = dataset_version(self.store)
        log.info(
            "%s round %d: training from %s on %d examples (dataset %s)",
            self.name,
            round_,
            version_id,
            len(examples),
            dataset,
        )
        started = time.monotonic()
        keep_b_local = self.settings.personalise.method == "local_b"
        global_state = adapter_state(model)
        kept = self.store.versions.local_part(LOCAL_B) if keep_b_local else None
        if kept is not None:  # FedSA: train from the global A and this tenant's own B
            load_adapter_state(model, with_local_part(global_state, adapter_from_bytes(kept)))
        report = run_recipe(
            model, tokenizer, examples, federation.train, federation.federation.seed * 1000 + round_ * 10 + self.index
        )
        if keep_b_local:  # the B matrices stay here; HQ gets the trained A with its own B
            trained = adapter_state(model)
            self.store.versions.keep_local_part(LOCAL_B, adapter_to_bytes(local_part(trained)))
            load_adapter_state(model, shared_part(trained, global_state))
        self.store.versions.record_evaluation(
            version_id,
            EvaluationKind.TRAINING,
            {
                "round": round_,
                "method": report.method,
                "examples": report.examples,
                "loss": report.loss,
                **{f"{phase}_losses": losses for phase, losses in report.losses.items()},
                "duration_s": time.monotonic() - started,
                "dataset_version": dataset,
            },
        )
        return TrainOutcome(len(examples), report.loss, dataset)

    def training_examples(self) -> list[TrainingExample]:
        """The product's feedback as curated training examples, less the held-out slice."""
        return training_examples(self.store, self.settings.curation)

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

    def assess(
        self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, version_id: str, held_out: list[Reference]
    ) -> Assessment:
        """Offline hit rate on the held-out finals and every gate, for the version loaded in `model`."""
        gates = self.settings.evaluation
        hits = offline_hit_rate(model, tokenizer, held_out, gates.hit_similarity, self.settings.held_out_tokens)
        self.store.versions.record_evaluation(version_id, EvaluationKind.HIT_RATE, hits.metrics())
        return hits, self.gate(model, tokenizer, version_id, held_out, hits)

    def evaluate_version(
        self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, version_id: str
    ) -> dict[str, float]:
        """Gate the loaded global version and the tenant's personalised candidate of it on the held-out finals;
        offer the global version unless the personalised one drafts better with confidence (src/fedloop/client/evaluate/
        candidates.py). Returns the metrics HQ gets."""
        held_out = self.held_out(version_id)
        assessed = {version_id: self.assess(model, tokenizer, version_id, held_out)}
        hits, results = assessed[version_id]
        metrics = hits.metrics()
        for gate in results:
            metrics[gate.name.replace("_", "-")] = gate.value
            if gate.name == EvaluationKind.KL_TO_SERVING:
                metrics["kl-bound"] = gate.bound  # HQ's report draws each tenant's bound
        personal = self.personalise(model, tokenizer, version_id)
        if personal is not None:
            assessed[personal] = self.assess(model, tokenizer, personal, held_out)
            metrics["personalised-hit-rate"] = assessed[personal][0].rate
        best = better_candidate(assessed, version_id, self.settings.evaluation.confidence)
        for candidate, (candidate_hits, checks) in assessed.items():
            verdicts = ", ".join(f"{g.name} {g.value:.4f} ({g.verdict})" for g in checks)
            low, high = candidate_hits.interval()
            measured = (
                f"offline hit rate {candidate_hits.rate:.2f} [{low:.2f}, {high:.2f}] on "
                f"{candidate_hits.count} held-out finals"
                if candidate_hits.count
                else "no held-out finals yet"
            )
            if candidate == best:
                self.release.offer(candidate, f"{measured}; {verdicts}")
            elif all(g.passed for g in checks):
                self.store.audit(
                    ACTOR,
                    "release-passed-over",
                    f"{candidate}: {measured}; {best} offered (the global version unless a personalised "
                    f"candidate drafts better with {self.settings.evaluation.confidence:.0%} confidence)",
                )
            else:
                self.store.audit(ACTOR, "release-refused", f"{candidate}: {verdicts}")
                self.release.decline(candidate, EvaluationKind.REFUSED, verdicts)
            log.info(
                "%s evaluated %s: %s; %s%s",
                self.name,
                candidate,
                measured,
                verdicts,
                " (offered)" if candidate == best else "",
            )
        metrics["gates-passed"] = int(all(g.passed for g in results))
        metrics[DECLINED] = int(
            version_id in self.release.declined()
        )  # HQ does not continue from a version all decline
        metrics["offered-personalised"] = int(best is not None and best != version_id)
        return metrics
