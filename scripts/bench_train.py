"""Local training speed and memory: fedloop's recipe against a plain PEFT + transformers loop on the same batches.

For each model and arm, in a fresh process each (so that peak memory is the
arm's own), LoRA r=16 on every linear layer, SFT on the Bitext
customer-support replies (`--data`), `--batch` examples of at most
`--seq` tokens per step:
- fedloop: `client.train.recipe.run_recipe` with `[train] method = "sft"`,
  what a tenant runs (it tokenises each batch itself and weighs each sequence).
- floor: the same examples in the same order, tokenised beforehand, through
  `model(input_ids, attention_mask, labels=labels).loss` (transformers' own
  loss), AdamW step, zero_grad: the least any LoRA trainer does.
One step on the first batch warms up (the same batch in both arms: the CPU
kernels set up once per shape), then `--steps` steps are timed. Printed: tokens
per second (the batches' real tokens, padding not counted) over `--repeats`
runs of each arm in ABBA order (this machine's speed drifts by 10-20 % over minutes), the
process's peak resident memory during the timed steps and its growth over the
loaded model (counted from after the warm-up, once glibc has handed back what it
had freed: scripts/process_memory.py), and fedloop / floor (goal: tokens per
second ratio >= 0.9). glibc keeps freed activations in its heaps, so the peak of
a step varies by about a GB between runs of the same arm; run with
MALLOC_MMAP_THRESHOLD_=65536 for what the step holds live (slower: every large
tensor is then mapped and unmapped).

Models: SmolLM2-135M-Instruct (real weights, `make model`) and Qwen2-0.5B built
from its config with random weights (speed and memory do not depend on the
values; scripts/random_models.py). Arms: float32 (the CPU default), bfloat16,
bfloat16 with gradient checkpointing. On a CPU-only machine every arm runs on
the CPU; QLoRA (nf4) and the larger sizes need a GPU and are not measured here.

Run: .venv/bin/python scripts/bench_train.py --data ../shared/data/bitext/bitext_customer_support_4514.csv \
        [--models smollm2-135m qwen2-0.5b] [--batch 4] [--seq 256] [--steps 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from process_memory import resident_bytes, start_peak_count
from random_models import parameter_count, qwen2_config, write_random_model
from transformers import AutoConfig

from fedloop.client.store.api import TrainingExample
from fedloop.client.train.data import collate, curriculum, encode, mix
from fedloop.client.train.recipe import run_recipe
from fedloop.shared.adapter import Placement, attach_lora, load_base_model
from fedloop.shared.settings import LoraSettings, Pool, TrainSection

ROOT = Path(__file__).resolve().parents[1]
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA = LoraSettings(rank=16, alpha=32, target_modules=ALL_LINEAR)
SEED = 0
GB = 1e9
PRECISIONS = (("float32", False), ("bfloat16", False), ("bfloat16", True))  # (dtype, gradient checkpointing)


@dataclass(frozen=True)
class ArmSpec:
    """One measured arm: which trainer, on which model, in which precision."""

    trainer: str  # "fedloop" or "floor"
    model_dir: Path
    dtype: str
    checkpointing: bool
    batch: int
    seq: int
    steps: int
    data: Path


@dataclass(frozen=True)
class ArmResult:
    """What one arm measured."""

    tokens: int
    seconds: float
    peak_bytes: int
    model_bytes: int

    @classmethod
    def pooled(cls, results: list[ArmResult]) -> ArmResult:
        """Several repeats as one: their tokens and seconds summed, the repeat with the highest peak's memory."""
        highest = max(results, key=lambda r: r.peak_bytes)
        return cls(
            sum(r.tokens for r in results), sum(r.seconds for r in results), highest.peak_bytes, highest.model_bytes
        )

    @property
    def tokens_per_second(self) -> float:
        """Real (unpadded) tokens trained per second."""
        return self.tokens / self.seconds


def load_examples(data: Path, count: int) -> list[TrainingExample]:
    """The first `count` Bitext rows as training examples (prompt = instruction, target = response)."""
    frame = pd.read_csv(data, nrows=count)
    return [TrainingExample(row.instruction, row.response, 1.0, Pool.CORE_BASELINE) for row in frame.itertuples()]


def run_arm(spec: ArmSpec, results: multiprocessing.Queue[ArmResult]) -> None:
    """Load the model in the arm's precision, warm up one step, time `spec.steps` steps."""
    model, tokenizer = load_base_model(spec.model_dir, Placement.of("cpu", spec.dtype))
    peft_model = attach_lora(model, LORA, SEED)
    settings = TrainSection(
        method="sft",
        batch_size=spec.batch,
        max_seq_len=spec.seq,
        max_steps=spec.steps,
        curriculum=(0.0,),
        gradient_checkpointing=spec.checkpointing,
    )
    examples = load_examples(spec.data, spec.batch * spec.steps)
    ordered = curriculum(mix(examples, settings), settings.curriculum, SEED)[0]  # run_recipe's own order
    batches = [
        collate(
            [encode(tokenizer, w.example.messages, w.example.target, spec.seq) for w in ordered[i : i + spec.batch]],
            tokenizer.pad_token_id,
        )
        for i in range(0, len(ordered), spec.batch)
    ]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    if spec.trainer == "fedloop":
        first_batch = [w.example for w in ordered[: spec.batch]]  # the floor warms up on the same batch shape
        run_recipe(peft_model, tokenizer, first_batch, settings.model_copy(update={"max_steps": 1}), SEED)
        model_bytes = start_peak_count()
        started = time.perf_counter()
        report = run_recipe(peft_model, tokenizer, examples, settings, SEED)
        seconds = time.perf_counter() - started
        assert report.steps("sft") == spec.steps
    else:
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)
        if spec.checkpointing:
            peft_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        peft_model.train()

        def step(batch: dict[str, torch.Tensor]) -> None:
            loss = peft_model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        step(batches[0])
        model_bytes = start_peak_count()
        started = time.perf_counter()
        for batch in batches:
            step(batch)
        seconds = time.perf_counter() - started
    results.put(ArmResult(tokens, seconds, resident_bytes("VmHWM"), model_bytes))


def measure(spec: ArmSpec) -> ArmResult:
    """Run one arm in a fresh process and return what it measured."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[ArmResult] = context.Queue()
    process = context.Process(target=run_arm, args=(spec, results))
    process.start()
    result = results.get()
    process.join()
    return result


def model_dirs(names: list[str], smollm: Path, scratch: Path) -> dict[str, Path]:
    """Each named model's directory: SmolLM2's own, the Qwen2 sizes written with random weights."""
    dirs = {}
    for name in names:
        if name == "smollm2-135m":
            dirs[name] = smollm
        else:
            dirs[name] = write_random_model(qwen2_config(name), smollm, scratch / name, torch.bfloat16)
    return dirs


def main() -> None:
    """Measure every model and precision with both trainers and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the Bitext customer-support CSV")
    parser.add_argument(
        "--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct", help="SmolLM2-135M's directory"
    )
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2-0.5b"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each arm, in ABBA order")
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"--data {args.data} not found: pass the path of bitext_customer_support_4514.csv")
    print(
        f"LoRA r={LORA.rank} on {', '.join(ALL_LINEAR)}; batch {args.batch}, at most {args.seq} tokens, "
        f"{args.steps} timed steps after one warm-up, {args.repeats} repeats per arm; "
        f"CPU, {torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory(prefix="fedloop-bench-train-") as scratch:
        for name, model_dir in model_dirs(args.models, args.model, Path(scratch)).items():
            weights = "real weights" if name == "smollm2-135m" else "random weights"
            size = parameter_count(AutoConfig.from_pretrained(model_dir, local_files_only=True))
            print(f"\n{name} ({size / 1e6:.0f}M parameters, {weights})")
            print(
                f"  {'precision':<22}{'fedloop tok/s':>14}{'floor tok/s':>13}{'ratio':>7}"
                f"{'fedloop peak GB':>17}{'floor peak GB':>15}"
            )
            for dtype, checkpointing in PRECISIONS:
                found: dict[str, list[ArmResult]] = {"fedloop": [], "floor": []}
                for repeat in range(args.repeats):  # ABBA order: a drift of the machine's speed hits both arms
                    for trainer in ("fedloop", "floor") if repeat % 2 == 0 else ("floor", "fedloop"):
                        spec = ArmSpec(
                            trainer, model_dir, dtype, checkpointing, args.batch, args.seq, args.steps, args.data
                        )
                        found[trainer].append(measure(spec))
                fedloop, floor = ArmResult.pooled(found["fedloop"]), ArmResult.pooled(found["floor"])
                each = ", ".join(
                    f"{a.tokens_per_second / b.tokens_per_second:.2f}"
                    for a, b in zip(found["fedloop"], found["floor"], strict=True)
                )
                label = dtype + (" + checkpointing" if checkpointing else "")
                print(
                    f"  {label:<22}{fedloop.tokens_per_second:>14.0f}{floor.tokens_per_second:>13.0f}"
                    f"{fedloop.tokens_per_second / floor.tokens_per_second:>7.2f} ({each})"
                    f"{fedloop.peak_bytes / GB:>8.2f} (+{(fedloop.peak_bytes - fedloop.model_bytes) / GB:.2f})"
                    f"{floor.peak_bytes / GB:>8.2f} (+{(floor.peak_bytes - floor.model_bytes) / GB:.2f})",
                    flush=True,
                )
    print("\ntok/s = all repeats' tokens over their time; ratio = fedloop's over the floor's (goal >= 0.9), then each")
    print("repeat's; peak = the highest resident memory of a repeat's timed steps, model and adapter included")
    print("(+ its growth over them after the warm-up step, freed heap memory handed back first)")


if __name__ == "__main__":
    main()
