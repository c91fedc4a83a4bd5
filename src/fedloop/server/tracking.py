"""Optional MLflow tracking of HQ's rounds (the `mlflow` extra; off unless `tracking.mlflow_uri` is set).

Each federated run becomes an MLflow run named after it; after every round
HQ logs the round's figures (mean and per-tenant hit rate, tenants merged,
refusals, bytes, duration) with the round as step, and the round's version in
the standard PEFT layout as an artifact (`versions/<id>/`). Only what HQ
already holds is logged: aggregate metrics and merged adapters.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fedloop.shared.adapter import AdapterState, export_peft
from fedloop.shared.pooled_hit_rate import pooled_hit_rate
from fedloop.shared.protocol import HIT_RATE
from fedloop.shared.settings import LoraSettings


class TrackingError(RuntimeError):
    """MLflow tracking was asked for but cannot run; the message says what to install or fix."""


class MlflowTracker:
    """Logs rounds of one run to MLflow; a context manager that ends the MLflow run."""

    def __init__(
        self, uri: str, experiment: str, artifacts: str, run_name: str, lora: LoraSettings, base_model: str
    ) -> None:
        try:
            import mlflow
        except ImportError:
            raise TrackingError(
                "tracking.mlflow_uri is set but MLflow is not installed: "
                "pip install 'fedloop[mlflow]', or set tracking.mlflow_uri = \"\""
            ) from None
        self._mlflow = mlflow
        self._lora, self._base_model = lora, base_model
        mlflow.set_tracking_uri(uri)
        if artifacts and mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment, artifact_location=artifacts)
        mlflow.set_experiment(experiment)
        self._run = mlflow.start_run(run_name=run_name)
        mlflow.log_params(
            {
                "lora_rank": lora.rank,
                "lora_alpha": lora.alpha,
                "target_modules": ",".join(lora.target_modules),
                "base_model": base_model,
            }
        )

    @property
    def run_id(self) -> str:
        """The MLflow run id."""
        return str(self._run.info.run_id)

    def log_round(self, round_: int, report: dict[str, Any], version_id: str, adapter: AdapterState) -> None:
        """The round's figures at step `round_`, and its version as a PEFT-layout artifact."""
        evaluation = {t: m for t, m in report.get("evaluation", {}).items() if m.get("num-examples", 0) > 0}
        metrics: dict[str, float] = {f"{HIT_RATE}/{t}": m[HIT_RATE] for t, m in evaluation.items()}
        pooled = pooled_hit_rate(evaluation)
        if pooled is not None:
            metrics[f"{HIT_RATE}/pooled"] = pooled.rate
        metrics.update(
            {
                "tenants": len(report.get("contributors", {})),
                "refused": len(report.get("refused", {})),
                "bytes-to-hq": sum(report.get("bytes_to_hq", {}).values()),
                "duration-s": report.get("duration_s", 0.0),
            }
        )
        self._mlflow.log_metrics(metrics, step=round_)
        with tempfile.TemporaryDirectory() as directory:
            export_peft(adapter, self._lora, self._base_model, Path(directory))
            self._mlflow.log_artifacts(directory, artifact_path=f"versions/{version_id}")

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        """End the MLflow run: FINISHED, or FAILED when the federated run raised."""
        self._mlflow.end_run(status="FAILED" if error_type else "FINISHED")
