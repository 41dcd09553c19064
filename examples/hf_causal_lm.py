"""A tiny Llama-style causal LM trained by Hugging Face's Trainer with labelsmooth's fused loss.

    python examples/hf_causal_lm.py        (CPU, seconds; needs transformers and accelerate)

Nothing is downloaded: the model is built from a config with random weights (2 layers, width 64,
the 32,000-token vocabulary of Llama 2) and learns a synthetic language (each token is the
previous one plus 3, modulo 512). The one line a Trainer script adds:

    apply_to(model, label_smoothing=0.1)   # from labelsmooth.integrations.transformers

and ``label_smoothing_factor`` stays 0 in TrainingArguments. The training loss is then
labelsmooth's label-smoothed cross-entropy, computed from the final hidden states and the LM
head's weight without building the (batch x tokens x vocabulary) logits.

Then one training step (forward + backward of a 4 x 256-token batch) is measured twice, each in a
fresh process: with transformers' own loss on the logits, and with the adapter. On CPU the figure
is the process's peak resident memory during the step minus its resident memory just before it
(Linux: /proc/self/status, the peak reset through /proc/self/clear_refs); on a GPU it is
``torch.cuda.max_memory_allocated`` minus the memory allocated before the step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import torch
import transformers

from labelsmooth.integrations.transformers import apply_to

LABEL_SMOOTHING = 0.1
CONFIG = dict(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
MEASURED_BATCH = (4, 256)


def tiny_llama(device: str = "cpu") -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).to(device)


def synthetic_text(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    """Token ids (rows, length): a random start, then +3 modulo 512 at each position."""
    start = torch.randint(512, (rows, 1), generator=torch.Generator().manual_seed(seed))
    return (start + 3 * torch.arange(length)) % 512


def train_with_trainer(output_dir: str) -> list[float]:
    model = tiny_llama()
    apply_to(model, label_smoothing=LABEL_SMOOTHING)
    ids = synthetic_text(256, 32)
    dataset = [{"input_ids": row, "labels": row} for row in ids]
    args = transformers.TrainingArguments(output_dir=output_dir, max_steps=20, per_device_train_batch_size=8,
                                          gradient_accumulation_steps=2, learning_rate=1e-2, logging_steps=5,
                                          save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset)
    trainer.remove_callback(transformers.PrinterCallback)  # the losses are printed below
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def measure_step(adapter: bool) -> dict:
    """Memory one forward + backward step adds, in MB, in this (fresh) process."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = tiny_llama(device).train()
    if adapter:
        apply_to(model, label_smoothing=LABEL_SMOOTHING)
    ids = synthetic_text(*MEASURED_BATCH).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets the peak resident memory (VmHWM) to the current one
        before = _resident_kib("VmRSS") * 1024
    model(input_ids=ids, labels=ids).loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _resident_kib("VmHWM") * 1024
    return {"device": device, "step_mb": (peak - before) / 2**20}


def main() -> None:
    print(f"Trainer, tiny random Llama (vocabulary {CONFIG['vocab_size']}), apply_to(model, "
          f"label_smoothing={LABEL_SMOOTHING}):")
    with tempfile.TemporaryDirectory() as output_dir:
        losses = train_with_trainer(output_dir)
    print("  training loss every 5 steps: " + ", ".join(f"{loss:.2f}" for loss in losses))

    measured = {}
    for adapter in (False, True):
        out = subprocess.run([sys.executable, __file__, "--measure-step", str(int(adapter))],
                             capture_output=True, text=True, check=True).stdout
        measured[adapter] = json.loads(out.splitlines()[-1])
    rows, length = MEASURED_BATCH
    logits_mb = rows * length * CONFIG["vocab_size"] * 4 / 2**20
    how = ("peak resident memory of the step, separate processes" if measured[True]["device"] == "cpu"
           else "torch.cuda.max_memory_allocated, separate processes")
    print(f"one training step, {rows} x {length} tokens ({how}):")
    print(f"  without the adapter (transformers' loss on the logits): {measured[False]['step_mb']:8.1f} MB")
    print(f"  with apply_to (no logits):                              {measured[True]['step_mb']:8.1f} MB")
    print(f"  the float32 logits alone, {rows} x {length} x {CONFIG['vocab_size']}:"
          f"{logits_mb:19.1f} MB")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure-step"]:
        print(json.dumps(measure_step(adapter=sys.argv[2] == "1")))
    else:
        main()
