"""labelsmooth.integrations.transformers against the unpatched models and transformers' own losses.

References, none of them computed by the adapter: the unpatched model's logits, shifted here by
slicing, through ``labelsmooth.cross_entropy`` and (uniform eps) ``F.cross_entropy(...,
label_smoothing=eps)``; transformers' ``LabelSmoother`` and ``Trainer(label_smoothing_factor=eps)``.

Tolerances. The tiny models run in float64, so patched and reference differ by summation order
alone: rtol 1e-9 (measured: below 1e-13). transformers' LabelSmoother sums its smoothing term in
float32 whatever the logits' dtype, so comparisons with it use rtol 1e-6. The convergence check runs
in float32: the two losses of a step differ by rounding (fused tiles vs one matmul), which the
optimizer carries along; measured over 40 Adam steps (the loss falls from 4.59 to 3.29): at most
2e-7 relative, asserted at 1e-5.
"""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest
import torch
import torch.nn.functional as F

import labelsmooth

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[dev]')")
from labelsmooth.integrations.transformers import (  # noqa: E402
    SUPPORTED_MODEL_TYPES,
    apply_to,
    remove_from,
    shifted_labels,
    trainer_loss,
)

pytestmark = pytest.mark.usefixtures("single_thread")
VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, head_dim=8, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
              eos_token_id=2)
NO_HEAD_DIM = {k: v for k, v in COMMON.items() if k != "head_dim"}
# One tiny random configuration per supported model type; softcap small enough to matter.
ARCHITECTURES = {
    "llama": COMMON, "mistral": COMMON, "qwen2": COMMON, "qwen3": COMMON, "gemma": COMMON, "olmo2": COMMON,
    "gemma2": {**COMMON, "final_logit_softcapping": 0.05},
    "gemma3_text": {**COMMON, "final_logit_softcapping": 0.05},
    "phi": NO_HEAD_DIM, "phi3": NO_HEAD_DIM,
    "gpt2": dict(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=2,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
}
FLOAT64 = dict(rtol=1e-9, atol=1e-12)
EPS = 0.1


def tiny_model(model_type: str, seed: int = 0, dtype=torch.float64):
    if model_type not in transformers.CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no {model_type}")
    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(model_type, **ARCHITECTURES[model_type])
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.to(dtype).train()


def token_batch(seed: int = 0, lengths=(11, 6, 2), pad: int = -100):
    """ids (B, T), attention mask and labels, right-padded to the longest of ``lengths``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(lengths), max(lengths)), generator=g)
    position = torch.arange(max(lengths))
    mask = (position < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask, torch.where(mask.bool(), ids, pad)


def reference(model, ids, mask, labels, loss_of_logits):
    """Loss and gradients of the unpatched model, the loss taken from its (B, T, V) logits."""
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask).logits
    pad = torch.full_like(labels[:, :1], -100)
    target = torch.cat([labels[:, 1:], pad], 1)  # position t predicts label t + 1
    loss = loss_of_logits(logits.flatten(0, 1), target.flatten())
    loss.backward()
    return loss.detach(), gradients(model)


def gradients(model) -> dict:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def patched(model, ids, mask, labels, **call):
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, **call)
    out.loss.backward()
    return out, gradients(model)


def assert_same(loss, grads, ref_loss, ref_grads, tolerance=FLOAT64):
    torch.testing.assert_close(loss.detach(), ref_loss, **tolerance)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **tolerance, msg=name)


def test_every_supported_model_type_is_tested_here():
    assert set(ARCHITECTURES) == SUPPORTED_MODEL_TYPES


@pytest.mark.parametrize("padding", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_loss_and_gradients_equal_the_unpatched_model(model_type, padding):
    model = tiny_model(model_type)
    ids, mask, labels = token_batch(lengths=(11, 6, 2) if padding else (11, 11, 11))
    softcap = getattr(model.config, "final_logit_softcapping", None)
    for loss_of_logits in (lambda x, y: F.cross_entropy(x, y, label_smoothing=EPS),
                           lambda x, y: labelsmooth.cross_entropy(x, y, label_smoothing=EPS)):
        ref_loss, ref_grads = reference(model, ids, mask, labels, loss_of_logits)
        with apply_to(model, label_smoothing=EPS, chunk_size=8) as patch:
            assert patch.softcap == softcap
            out, grads = patched(model, ids, mask, labels)
        assert out.logits is None
        assert_same(out.loss, grads, ref_loss, ref_grads)


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text"])
def test_softcap_comes_from_the_config_and_matters(model_type):
    model = tiny_model(model_type)
    ids, mask, labels = token_batch()
    with apply_to(model, label_smoothing=EPS):
        softcapped = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    model.config.final_logit_softcapping = None  # the model's own logits are then not capped either
    ref_loss, _ = reference(model, ids, mask, labels, lambda x, y: F.cross_entropy(x, y, label_smoothing=EPS))
    with apply_to(model, label_smoothing=EPS):
        uncapped = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(uncapped.detach(), ref_loss, **FLOAT64)
    assert abs(float(softcapped.detach() - uncapped.detach())) > 1e-3


@pytest.mark.parametrize("options", [
    dict(distribution="non_target", z_loss=1e-3),
    dict(class_weight="random", label_smoothing=-0.05),
    dict(ignore_index=0, distribution="prior"),
], ids=["non_target+z_loss", "class_weight+negative_eps", "ignore_index+prior"])
def test_loss_options_pass_through(options):
    model = tiny_model("llama")
    options = dict(options)
    eps = options.pop("label_smoothing", EPS)
    g = torch.Generator().manual_seed(3)
    if options.get("class_weight") == "random":
        options["class_weight"] = torch.rand(VOCAB, generator=g, dtype=torch.float64) + 0.5
    if options.get("distribution") == "prior":
        options["distribution"] = torch.softmax(torch.randn(VOCAB, generator=g, dtype=torch.float64), 0)
    ignore_index = options.get("ignore_index", -100)
    ids, mask, labels = token_batch(pad=ignore_index)
    logits_options = {("weight" if k == "class_weight" else k): v for k, v in options.items()}
    ref_loss, ref_grads = reference(model, ids, mask, labels.masked_fill(labels == ignore_index, -100),
                                    lambda x, y: labelsmooth.cross_entropy(
                                        x, y.masked_fill(y == -100, ignore_index), label_smoothing=eps,
                                        **logits_options))
    with apply_to(model, label_smoothing=eps, **options):
        out, grads = patched(model, ids, mask, labels)
    assert_same(out.loss, grads, ref_loss, ref_grads)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_gradient_accumulation_over_uneven_micro_batches_equals_one_batch(model_type):
    model = tiny_model(model_type)
    ids, mask, labels = token_batch(lengths=(11, 6, 2, 9))
    micro_batches = [(ids[:1], mask[:1], labels[:1]), (ids[1:3, :6], mask[1:3, :6], labels[1:3, :6]),
                     (ids[3:, :9], mask[3:, :9], labels[3:, :9])]
    num_items = sum(int((y[:, 1:] != -100).sum()) for _, _, y in micro_batches)
    ref_loss, ref_grads = reference(model, ids, mask, labels, lambda x, y: F.cross_entropy(x, y, label_smoothing=EPS))
    with apply_to(model, label_smoothing=EPS):
        model.zero_grad()
        total = 0.0
        for i, (x, m, y) in enumerate(micro_batches):
            count = torch.tensor(num_items) if i % 2 else num_items  # Trainer passes a tensor; an int works too
            loss = model(input_ids=x, attention_mask=m, labels=y, num_items_in_batch=count).loss
            loss.backward()
            total += loss.detach()
        assert_same(total, gradients(model), ref_loss, ref_grads)
        # without the count, the mean of micro-batch means weighs a token by its micro-batch's size
        model.zero_grad()
        for x, m, y in micro_batches:
            (model(input_ids=x, attention_mask=m, labels=y).loss / len(micro_batches)).backward()
    misweighted, expected = (torch.cat([g.flatten() for g in grads.values()])
                             for grads in (gradients(model), ref_grads))
    assert (misweighted - expected).norm() > 0.05 * expected.norm()


def test_eval_mode_keeps_the_logits_and_gives_the_same_loss():
    model = tiny_model("qwen2")
    ids, mask, labels = token_batch()
    ref_loss, _ = reference(model, ids, mask, labels, lambda x, y: F.cross_entropy(x, y, label_smoothing=EPS))
    expected_logits = model(input_ids=ids, attention_mask=mask).logits
    with apply_to(model, label_smoothing=EPS):
        out = model.eval()(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.logits, expected_logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss.detach(), ref_loss, **FLOAT64)
    with apply_to(model, label_smoothing=EPS, skip_logits=True):
        assert model(input_ids=ids, attention_mask=mask, labels=labels).logits is None
    with apply_to(model.train(), label_smoothing=EPS, skip_logits=False):
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits is not None
    torch.testing.assert_close(out.loss.detach(), ref_loss, **FLOAT64)


def test_under_autocast_the_head_runs_in_the_autocast_dtype_and_the_loss_in_float32():
    """As transformers' own loss (the logits upcast to float32) and F.cross_entropy under autocast."""
    model = tiny_model("llama", dtype=torch.float32)
    ids, mask, labels = token_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids, attention_mask=mask).logits
        with apply_to(model, label_smoothing=EPS):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    target = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    expected = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), label_smoothing=EPS)
    torch.testing.assert_close(loss, expected, rtol=1e-2, atol=0)  # bf16 logits: the head's GEMMs may round apart


def test_tuples_precomputed_shift_labels_and_positional_arguments():
    model = tiny_model("gpt2")
    ids, mask, labels = token_batch()
    with apply_to(model, label_smoothing=EPS):
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        as_tuple = model(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
        pre_shifted = model(input_ids=ids, attention_mask=mask, shift_labels=shifted_labels(labels)).loss
        positional = model(ids, attention_mask=mask, labels=labels).loss
    assert isinstance(as_tuple, tuple)
    for loss in (as_tuple[0], pre_shifted, positional):
        torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_the_patch_is_removed_cleanly():
    model = tiny_model("llama")
    ids, mask, labels = token_batch()
    own_forward = inspect.signature(model.forward)
    before = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert "forward" not in model.__dict__
    patch = apply_to(model, label_smoothing=0.3)
    assert inspect.signature(model.forward) == own_forward  # Trainer keeps the batch columns it names
    again = apply_to(model, label_smoothing=EPS)  # replaces the first
    assert model.forward is again and patch.model is model
    patch.remove()  # no longer applied: nothing happens
    assert model.forward is again
    assert remove_from(model) is True and remove_from(model) is False
    assert "forward" not in model.__dict__
    after = model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=0)
    torch.testing.assert_close(after.loss, before.loss, rtol=0, atol=0)  # transformers' own loss again
    with apply_to(model):
        pass
    assert "forward" not in model.__dict__


def test_a_copy_of_a_patched_model_computes_with_its_own_weights():
    model = tiny_model("llama")
    ids, mask, labels = token_batch()
    apply_to(model, label_smoothing=EPS)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.no_grad():
            clone.lm_head.weight.mul_(2)
        assert clone.forward.model is clone
        changed = clone(input_ids=ids, attention_mask=mask, labels=labels).loss
        remove_from(clone)
        ref, _ = reference(clone, ids, mask, labels, lambda x, y: F.cross_entropy(x, y, label_smoothing=EPS))
        torch.testing.assert_close(changed.detach(), ref, **FLOAT64)


def test_generation_is_unaffected():
    model = tiny_model("llama").eval()
    ids = token_batch(lengths=(5, 5))[0]
    expected = model.generate(ids, max_new_tokens=4, do_sample=False)
    with apply_to(model, label_smoothing=EPS):
        assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), expected)


def test_bad_arguments_are_refused_by_name():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="transformers causal LM"):
        apply_to(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown loss option.*'smoothing'"):
        apply_to(model, smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        apply_to(model, label_smoothing=1.5)
    with pytest.raises(ValueError, match="class_weight"):
        apply_to(model, class_weight=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="skip_logits"):
        apply_to(model, skip_logits="yes")
    with pytest.raises(ValueError, match="shift_labels"):
        trainer_loss(EPS, shift_labels="yes")
    with pytest.raises(ValueError, match="unknown loss option.*'softcapping'"):
        trainer_loss(EPS, shift_labels=True, softcapping=30.0)
    with pytest.raises(ValueError, match="labels must be a tensor"):
        trainer_loss(EPS, shift_labels=True)({"logits": torch.zeros(1, 2, VOCAB)}, None)
    assert "forward" not in model.__dict__  # nothing was applied


def test_an_unlisted_architecture_is_refused():
    if "cohere" not in transformers.CONFIG_MAPPING:
        pytest.skip("this transformers has no cohere")
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model("cohere", **COMMON, logit_scale=0.25)
    model = transformers.AutoModelForCausalLM.from_config(config).double().train()
    with pytest.raises(ValueError, match="model_type must be one of.*'cohere'.*any_architecture"):
        apply_to(model, label_smoothing=EPS)
    # why: Cohere scales its logits after the head, so the hidden-state loss would be another loss
    ids, mask, labels = token_batch()
    ref_loss, _ = reference(model, ids, mask, labels, lambda x, y: F.cross_entropy(x, y, label_smoothing=EPS))
    with apply_to(model, label_smoothing=EPS, any_architecture=True):
        forced = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert abs(float(forced.detach() - ref_loss)) > 1e-3


# trainer_loss: the logits path, against transformers' LabelSmoother --------------------------------


def label_smoother(eps, outputs, labels, shift, num_items):
    smoother = transformers.trainer_pt_utils.LabelSmoother(epsilon=eps)
    if num_items is None:
        return smoother(outputs, labels, shift_labels=shift)
    if "num_items_in_batch" not in inspect.signature(smoother.__call__).parameters:
        pytest.skip(f"transformers {transformers.__version__}'s LabelSmoother has no num_items_in_batch")
    return smoother(outputs, labels, shift_labels=shift, num_items_in_batch=num_items)


@pytest.mark.parametrize("num_items", [None, 40])
@pytest.mark.parametrize("shift", [True, False], ids=["causal", "unshifted"])
def test_trainer_loss_equals_label_smoothing_factor(shift, num_items):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, VOCAB, generator=g, dtype=torch.float64, requires_grad=True)
    labels = token_batch()[2]
    outputs = {"logits": logits}
    expected = label_smoother(EPS, outputs, labels, shift, num_items)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    loss = trainer_loss(EPS, shift_labels=shift)(outputs, labels, num_items_in_batch=num_items)
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-9)
    classification = (logits[:, 0], labels[:, 0])  # (N, K) logits of a sequence classifier, tuple outputs
    torch.testing.assert_close(trainer_loss(EPS, shift_labels=False)(classification[:1], classification[1]),
                               label_smoother(EPS, classification[:1], classification[1], False, None),
                               rtol=1e-6, atol=1e-9)


def test_trainer_loss_differs_from_label_smoother_only_where_documented():
    logits = torch.randn(2, 5, VOCAB, dtype=torch.float64)
    all_ignored = torch.full((2, 5), -100)
    assert torch.isnan(label_smoother(EPS, {"logits": logits}, all_ignored, True, None))
    assert trainer_loss(EPS, shift_labels=True)({"logits": logits}, all_ignored).item() == 0.0
    negative = torch.tensor([[4, 5, -7, 6, 7]] * 2)
    assert torch.isfinite(label_smoother(EPS, {"logits": logits}, negative, True, None))  # -7 counted as class 0
    with pytest.raises(ValueError, match="target"):
        trainer_loss(EPS, shift_labels=True)({"logits": logits}, negative)


# Trainer ----------------------------------------------------------------------------------------------


def collate(rows):
    """Right-pad a list of {"input_ids": list} rows; labels -100 on the padding."""
    width = max(len(row["input_ids"]) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row["input_ids"])] = torch.tensor(row["input_ids"])
    mask = (torch.arange(width) < torch.tensor([len(row["input_ids"]) for row in rows])[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def train_steps(model, tmp_path, steps=3, **trainer_options):
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, VOCAB, (int(n),), generator=g).tolist(), "unused_column": 1}
            for n in torch.randint(3, 12, (16,), generator=g)]
    label_smoothing_factor = trainer_options.pop("label_smoothing_factor", 0.0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, seed=0, label_smoothing_factor=label_smoothing_factor)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, data_collator=collate,
                                   **trainer_options)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses, torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.slow
def test_trainer_runs_with_the_patch_as_with_label_smoothing_factor(tmp_path):
    base = tiny_model("llama")
    patched_model = copy.deepcopy(base)
    apply_to(patched_model, label_smoothing=EPS)
    losses, weights = train_steps(patched_model, tmp_path / "patched")
    logits_losses, logits_weights = train_steps(copy.deepcopy(base), tmp_path / "logits",
                                                compute_loss_func=trainer_loss(EPS, shift_labels=True))
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(logits_losses), **FLOAT64)
    torch.testing.assert_close(weights, logits_weights, **FLOAT64)
    if "num_items_in_batch" not in inspect.signature(transformers.trainer_pt_utils.LabelSmoother.__call__).parameters:
        return  # older LabelSmoother: a micro-batch mean under gradient accumulation, another loss
    own_losses, own_weights = train_steps(copy.deepcopy(base), tmp_path / "own", label_smoothing_factor=EPS)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(own_losses), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(weights, own_weights, rtol=1e-6, atol=1e-9)


# Convergence ------------------------------------------------------------------------------------------


def loss_curve(model, patch: bool, steps: int = 40) -> torch.Tensor:
    """Adam on a fixed stream of batches; the loss at each step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    curve = []
    if patch:
        apply_to(model, label_smoothing=EPS)
    for _ in range(steps):
        start = torch.randint(0, VOCAB, (8, 1), generator=g)
        ids = (start + 7 * torch.arange(16)) % VOCAB  # a learnable sequence: next = previous + 7
        if patch:
            loss = model(input_ids=ids, labels=ids).loss
        else:
            logits = model(input_ids=ids).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), label_smoothing=EPS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
    return torch.tensor(curve)


@pytest.mark.slow
def test_training_converges_as_without_the_patch():
    patched_curve = loss_curve(tiny_model("llama", dtype=torch.float32), patch=True)
    reference_curve = loss_curve(tiny_model("llama", dtype=torch.float32), patch=False)
    assert reference_curve[-5:].mean() < 0.8 * reference_curve[:5].mean()  # it learns
    torch.testing.assert_close(patched_curve, reference_curve, rtol=1e-5, atol=0)


@pytest.mark.slow
def test_the_hf_causal_lm_example_runs_and_saves_the_logits_memory(example):
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (pip install -e '.[dev]')")
    out = example("hf_causal_lm.py")
    losses = [float(x) for x in out.split("every 5 steps:")[1].splitlines()[0].split(",")]
    assert losses[-1] < losses[0] - 1  # it learns
    without, with_adapter, logits = (float(line.split(":")[-1].split()[0]) for line in out.splitlines()[-3:])
    assert with_adapter < without - logits  # at least the logits' size saved
