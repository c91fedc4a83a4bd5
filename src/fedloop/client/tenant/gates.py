"""Gates and the choice of candidate: measure a version on the tenant's held-out finals, gate it, and offer the
better of the global version and the tenant's personalised one to the release controller (with its audit text)."""

from __future__ import annotations

import logging

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from fedloop.client.evaluate.candidates import Assessment, better_candidate
from fedloop.client.evaluate.degeneration import degeneration_gate
from fedloop.client.evaluate.drift import GateResult, forgetting_gate, general_texts, kl_gate
from fedloop.client.evaluate.hit_rate import HitRate, hit_rate_gate, offline_hit_rate, reference_hit_rate
from fedloop.client.release.controller import ACTOR
from fedloop.client.samples.held_out import Reference, held_out_references
from fedloop.client.store.api import BASE_VERSION, EvaluationKind
from fedloop.client.tenant.personalisation import Personalising
from fedloop.shared.adapter import adapter_state
from fedloop.shared.protocol import DECLINED

log = logging.getLogger(__name__)


class Gating(Personalising):
    """A tenant's job of evaluating a version and offering a candidate."""

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
