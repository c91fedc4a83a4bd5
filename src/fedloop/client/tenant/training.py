"""Training a round: the local recipe from the global version on the product's feedback (less the held-out slice),
with FedSA's bookkeeping when the tenant keeps its own B matrices ("local_b")."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedloop.client.samples.curation import dataset_version, training_examples
from fedloop.client.store.api import EvaluationKind, TrainingExample
from fedloop.client.tenant.core import TenantCore
from fedloop.client.train.personalise import local_part, shared_part, with_local_part
from fedloop.client.train.recipe import run_recipe
from fedloop.shared.adapter import adapter_from_bytes, adapter_state, adapter_to_bytes, load_adapter_state

log = logging.getLogger(__name__)
LOCAL_B = "lora_B"  # the name the tenant keeps its own B matrices under ("local_b" personalisation)


@dataclass(frozen=True)
class TrainOutcome:
    """What a tenant's round of local training produced (aggregates only: what may leave the tenant)."""

    examples: int
    loss: float
    dataset_version: str


class Training(TenantCore):
    """A tenant's job of training locally."""

    def new_samples(self) -> int:
        """Admitted samples since the newest global version was installed here: what a continuous run's schedule
        asks (samples/held_out.py's slice included: the count only triggers a round)."""
        return self.store.samples.count_admitted_since(self.store.versions.last_installed_ms() or 0)

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
