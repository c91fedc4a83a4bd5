"""The fedloop message protocol on top of Flower's Message API.

HQ → tenant (train, evaluate): a RecordDict with ConfigRecord `global` holding
the sealed global version (`envelope`), its id (`version`) and the round (`round`).
Tenant → HQ (train): ConfigRecord `update` holding the sealed adapter
(`envelope`) and MetricRecord `metrics` (counts and aggregate metrics only).
HQ → tenant (query `enrol`): ConfigRecord `enrol` with a fresh random `challenge`.
Tenant → HQ (query `enrol`): ConfigRecord `enrol` with the tenant's name, key id and its SM2 signature over
`enrol_statement` (the challenge, the run id and its node id): proof that it holds the key it names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedloop.shared.envelope import Binding

if TYPE_CHECKING:  # the message keys above are read by the command line, which must not load Flower
    from flwr.app import ConfigRecord, RecordDict

GLOBAL = "global"
UPDATE = "update"
METRICS = "metrics"
ENROL = "enrol"
NUM_EXAMPLES = "num-examples"
HIT_RATE = "hit-rate"  # a metric name (the share of drafts that hit); not EvaluationKind.HIT_RATE, a record kind
DATASET_VERSION = "dataset-version"


def global_binding(
    tenant: str, run: str, round_: int, version_id: str, details: dict[str, Any] | None = None
) -> Binding:
    """What a global version sent to `tenant` in `round_` is bound to (the version id is its base).

    `details` (signed by HQ) carry the version's `parent`, `version_round` and SM3 `digest`.
    """
    return Binding("global", tenant, run, round_, version_id, details or {})


def update_binding(
    tenant: str, run: str, round_: int, base_version: str, num_examples: int = 0, dataset: str = ""
) -> Binding:
    """What a tenant's update trained on `base_version` in `round_` is bound to.

    The signed details carry the sample count and the tenant's dataset version (a digest, no data).
    """
    return Binding("update", tenant, run, round_, base_version, {NUM_EXAMPLES: num_examples, DATASET_VERSION: dataset})


def enrol_statement(challenge: str, run_id: int, node_id: int, tenant: str, key_id: str) -> bytes:
    """What a tenant signs to enrol: HQ's fresh challenge bound to this run, this node, its name and key id."""
    return f"fedloop-enrol/1|{challenge}|run {run_id}|node {node_id}|tenant {tenant}|key {key_id}".encode()


def global_content(envelope: bytes, version_id: str, round_: int) -> RecordDict:
    """The content of a train or evaluate message from HQ (id and round are re-checked against the seal)."""
    from flwr.app import ConfigRecord, RecordDict

    return RecordDict({GLOBAL: ConfigRecord({"envelope": envelope, "version": version_id, "round": round_})})


def update_content(envelope: bytes, metrics: Mapping[str, float | int]) -> RecordDict:
    """The content of a tenant's train reply."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    values: dict[str, int | float | list[int] | list[float]] = dict(metrics)
    return RecordDict({UPDATE: ConfigRecord({"envelope": envelope}), METRICS: MetricRecord(values)})


def sealed_envelope(record: ConfigRecord) -> bytes:
    """The sealed envelope a message's ConfigRecord carries; TypeError if it holds anything else."""
    envelope = record["envelope"]
    if not isinstance(envelope, bytes):
        raise TypeError(f"the envelope is a {type(envelope).__name__}, not bytes")
    return envelope


def message_round(record: ConfigRecord) -> int:
    """The round a global version's ConfigRecord names; TypeError if it is not an integer."""
    round_ = record["round"]
    if not isinstance(round_, int) or isinstance(round_, bool):
        raise TypeError(f"the round is a {type(round_).__name__}, not an integer")
    return round_


def wire_size(content: RecordDict) -> int:
    """Bytes of `content` as Flower serialises it for the wire."""
    from flwr.common.serde import recorddict_to_proto

    return int(recorddict_to_proto(content).ByteSize())
