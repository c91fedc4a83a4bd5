"""fedloop's GM crypto against its baselines, in one run.

Measured on this machine, each figure the median of many repetitions with its
interquartile range:

1. SM2 (fedloop, on OpenSSL's libcrypto) against gmssl's pure-Python SM2, the
   implementation fedloop used before: sign, verify, wrap, unwrap (ms per call).
   Goal: sign under 1 ms.
2. Timing against the secret: unwrap (d·C1) with a full-size private scalar and
   with a 200-bit one; gmssl's sign with a 256-bit and a 200-bit nonce. A ratio
   near 1.00 means the time does not follow the secret's length.
3. Sealing the SmolLM2 LoRA adapter (fedloop's envelope: SM4-GCM + SM2 wrap +
   SM2 signature over SM3 of every byte) against raw SM4-GCM on the same bytes.
   Goal: at least 0.5 x raw SM4-GCM throughput.

Run: .venv/bin/python scripts/bench_crypto.py [--model models/smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gmssl import sm2 as gm_sm2

from fedloop.shared.adapter import adapter_state, adapter_to_bytes, attach_lora, load_base_model
from fedloop.shared.crypto import GCM_NONCE_BYTES, new_sm4_key, sm4_gcm_encrypt
from fedloop.shared.envelope import open_envelope, seal
from fedloop.shared.keys import Keyring, init_keys
from fedloop.shared.protocol import update_binding
from fedloop.shared.settings import LoraSettings
from fedloop.shared.sm2 import SM2PrivateKey

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = bytes(32)  # what fedloop signs: an SM3 digest


def timed(call: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Median and interquartile range of `call`'s wall time, in ms."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    q1, median, q3 = statistics.quantiles(samples, n=4)
    return median, q1, q3


def show(label: str, figure: tuple[float, float, float], unit: str = "ms") -> str:
    """`label | median | [q1, q3]` as a table row."""
    median, q1, q3 = figure
    return f"| {label} | {median:.3f} {unit} | [{q1:.3f}, {q3:.3f}] |"


def gmssl_pair(private: SM2PrivateKey) -> gm_sm2.CryptSM2:
    """gmssl's SM2 object for the same key (the baseline)."""
    return gm_sm2.CryptSM2(private_key=private.scalar.hex(), public_key=private.public_key.point.hex(), mode=1)


def sm2_figures(repeats: int) -> None:
    """Sign, verify, wrap and unwrap: fedloop against gmssl."""
    key = SM2PrivateKey.generate()
    signature, wrapped = key.sign(MESSAGE), key.public_key.wrap(bytes(16))
    gm = gmssl_pair(key)
    gm_signature = gm.sign_with_sm3(MESSAGE, "1" * 64)
    fedloop = {
        "sign": timed(lambda: key.sign(MESSAGE), repeats),
        "verify": timed(lambda: key.public_key.verify(MESSAGE, signature), repeats),
        "wrap (encrypt a 16-byte data key)": timed(lambda: key.public_key.wrap(bytes(16)), repeats),
        "unwrap": timed(lambda: key.unwrap(wrapped), repeats),
    }
    baseline = {
        "sign": timed(lambda: gm.sign_with_sm3(MESSAGE, format(key_nonce(256), "064x")), repeats // 10),
        "verify": timed(lambda: gm.verify_with_sm3(gm_signature, MESSAGE), repeats // 10),
        "wrap (encrypt a 16-byte data key)": timed(lambda: gm.encrypt(bytes(16)), repeats // 10),
    }
    print("\n## SM2: fedloop (OpenSSL libcrypto) vs gmssl (pure Python)\n")
    print("| operation | fedloop median [IQR] | gmssl median [IQR] | gmssl / fedloop |\n|---|---|---|---|")
    for name, figure in fedloop.items():
        base = baseline.get(name)
        print(
            f"| {name} | {figure[0]:.3f} ms [{figure[1]:.3f}, {figure[2]:.3f}] | "
            + (
                f"{base[0]:.3f} ms [{base[1]:.3f}, {base[2]:.3f}] | {base[0] / figure[0]:.0f}x |"
                if base
                else "(gmssl does not check C3; not compared) | |"
            )
        )
    print(f"\nSM2 sign: {fedloop['sign'][0]:.3f} ms (goal < 1 ms): {'met' if fedloop['sign'][0] < 1 else 'NOT met'}")


def key_nonce(bits: int) -> int:
    """A random scalar with exactly `bits` bits."""
    return secrets.randbits(bits - 1) | (1 << (bits - 1))


def timing_figures(repeats: int) -> None:
    """Does the time follow the secret's length? fedloop's unwrap by d, gmssl's sign by nonce."""
    full, short = SM2PrivateKey(key_nonce(256).to_bytes(32, "big")), SM2PrivateKey(key_nonce(200).to_bytes(32, "big"))
    full_wrapped, short_wrapped = full.public_key.wrap(bytes(16)), short.public_key.wrap(bytes(16))
    ours = (timed(lambda: full.unwrap(full_wrapped), repeats), timed(lambda: short.unwrap(short_wrapped), repeats))
    gm = gmssl_pair(full)
    theirs = (
        timed(lambda: gm.sign_with_sm3(MESSAGE, format(key_nonce(256), "064x")), repeats // 10),
        timed(lambda: gm.sign_with_sm3(MESSAGE, format(key_nonce(200), "064x")), repeats // 10),
    )
    print("\n## Time against the secret's length\n")
    print("| operation | 256-bit secret | 200-bit secret | ratio |\n|---|---|---|---|")
    for label, (long_figure, short_figure) in (
        ("fedloop unwrap (d·C1), by d", ours),
        ("gmssl sign (k·G), by nonce k", theirs),
    ):
        print(
            f"| {label} | {long_figure[0]:.3f} ms | {short_figure[0]:.3f} ms | {long_figure[0] / short_figure[0]:.2f} |"
        )


def sealing_figures(payload: bytes, directory: Path, repeats: int) -> None:
    """fedloop's seal and open against raw SM4-GCM on the same bytes."""
    hq, tenant = init_keys("hq", "hq", directory), init_keys("tenant", "acme", directory)
    binding = update_binding("acme", "bench", 1, "v0", 1)
    envelope = seal(payload, binding, tenant, hq.public)
    trusted = Keyring([tenant.public])
    megabytes = len(payload) / 1e6
    gcm = timed(lambda: sm4_gcm_encrypt(new_sm4_key(), bytes(GCM_NONCE_BYTES), payload, b""), repeats)
    sealed = timed(lambda: seal(payload, binding, tenant, hq.public), repeats)
    opened = timed(lambda: open_envelope(envelope, hq, trusted, binding), repeats)
    print(f"\n## Sealing the {len(payload):,}-byte SmolLM2 adapter\n")
    print("| what | median | MB/s | ratio to raw SM4-GCM |\n|---|---|---|---|")
    for label, figure in (
        ("raw SM4-GCM (cryptography / OpenSSL), the baseline", gcm),
        ("fedloop seal (SM4-GCM + SM2 wrap + SM2 signature over SM3)", sealed),
        ("fedloop open (verify + unwrap + decrypt)", opened),
    ):
        print(
            f"| {label} | {figure[0]:.1f} ms [{figure[1]:.1f}, {figure[2]:.1f}] | {megabytes / figure[0] * 1000:.1f}"
            f" | {gcm[0] / figure[0]:.2f} |"
        )
    ratio = gcm[0] / sealed[0]
    print(f"\nseal throughput / raw SM4-GCM: {ratio:.2f} (goal >= 0.5): {'met' if ratio >= 0.5 else 'NOT met'}")


def main() -> None:
    """Run the three comparisons and print them as Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        default=ROOT / "models" / "smollm2-135m-instruct",
        help="local model directory (default: the one `make model` writes)",
    )
    parser.add_argument("--repeats", type=int, default=400, help="repetitions per SM2 figure (gmssl: a tenth)")
    args = parser.parse_args()
    if not (args.model / "config.json").exists():
        raise SystemExit(f"--model {args.model}: no model there; run `make model` first")
    base, _ = load_base_model(args.model)
    payload = adapter_to_bytes(adapter_state(attach_lora(base, LoraSettings(), 0)))
    print(f"model {args.model}; adapter {len(payload):,} bytes (default [lora]); {args.repeats} repetitions")
    sm2_figures(args.repeats)
    timing_figures(args.repeats)
    sealing_figures(payload, Path(tempfile.mkdtemp(prefix="bench-crypto-")), 40)


if __name__ == "__main__":
    main()
