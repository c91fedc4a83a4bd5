"""The fedloop message protocol on top of Flower's Message API.

HQ → tenant (train, evaluate): a RecordDict with ConfigRecord `global` holding
the global version's id (`version`) and the round (`round`), and ArrayRecord
`sealed` holding the sealed version.
Tenant → HQ (train): ArrayRecord `sealed` holding the sealed adapter and
MetricRecord `metrics` (counts and aggregate metrics only).
A sealed envelope travels as the raw bytes of one Array (`envelope`), which
Flower moves in 5 MB chunks, one stored object each: in a ConfigRecord it would
be a single object, and the SuperLink's SQLite store gives up ("database is
locked") while it writes one of hundreds of MB (a 7B model's r=64 adapter is 646 MB).
HQ → tenant (query `enrol`): ConfigRecord `enrol` with a fresh random `challenge`.
Tenant → HQ (query `enrol`): ConfigRecord `enrol` with the tenant's name, key id and its SM2 signature over
`enrol_statement` (the challenge, the run id and its node id): proof that it holds the key it names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedloop.shared.envelope import Binding

if TYPE_CHECKING:  # the message keys above are read by the command line, which must not load Flower
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

GLOBAL = "global"
SEALED = "sealed"
ENVELOPE = "envelope"
SEALED_STYPE = "fedloop.sealed-envelope"  # the Array's serialisation type: raw sealed bytes, not a NumPy array
METRICS = "metrics"
ENROL = "enrol"
COUNTS = "counts"  # the cheap query of a continuous run: how much new feedback a tenant has
MAX_DECLINED = 64  # versions a counts reply names as declined (the newest)
NEW_SAMPLES = "new-samples"  # its metric: admitted training samples since the global version the tenant holds
NUM_EXAMPLES = "num-examples"
DECLINED = "declined"  # an evaluation metric: 1 when the tenant will not serve the version (refused or rolled back)
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


def sealed_record(envelope: bytes) -> ArrayRecord:
    """A sealed envelope as an ArrayRecord of one raw-bytes Array (moved in chunks; see the module docstring)."""
    from flwr.app import Array, ArrayRecord

    array = Array(dtype="uint8", shape=(len(envelope),), stype=SEALED_STYPE, data=envelope)
    return ArrayRecord({ENVELOPE: array})


def global_content(envelope: bytes, version_id: str, round_: int) -> RecordDict:
    """The content of a train or evaluate message from HQ (id and round are re-checked against the seal)."""
    from flwr.app import ConfigRecord, RecordDict

    return RecordDict({GLOBAL: ConfigRecord({"version": version_id, "round": round_}), SEALED: sealed_record(envelope)})


def update_content(envelope: bytes, metrics: Mapping[str, float | int]) -> RecordDict:
    """The content of a tenant's train reply."""
    from flwr.app import MetricRecord, RecordDict

    values: dict[str, int | float | list[int] | list[float]] = dict(metrics)
    return RecordDict({SEALED: sealed_record(envelope), METRICS: MetricRecord(values)})


def sealed_envelope(content: RecordDict) -> bytes:
    """The sealed envelope a message carries; KeyError if it has none, TypeError if it is stored as anything else."""
    array = content.array_records[SEALED][ENVELOPE]
    if array.stype != SEALED_STYPE:
        raise TypeError(f"the sealed envelope is stored as {array.stype!r}, not as {SEALED_STYPE!r}")
    return bytes(array.data)


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
