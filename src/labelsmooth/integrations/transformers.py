"""Hugging Face transformers: a causal LM trained with labelsmooth's loss, without its logits.

    from labelsmooth.integrations.transformers import apply_to, trainer_loss
    apply_to(model, label_smoothing=0.1)          # a LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel, ...
    Trainer(model=model, args=args, train_dataset=data).train()    # or any loop: model(**batch).loss

    Trainer(model=any_model, args=args, train_dataset=data,        # the logits path, any model
            compute_loss_func=trainer_loss(label_smoothing=0.1, shift_labels=True))

``apply_to`` replaces ``forward`` on this one model object (not on its class). When ``labels`` (or
``shift_labels``) are given and the model is training, the model runs as usual up to its output
head; the head's input, the final hidden states, is taken instead of the (batch x tokens x
vocabulary) logits, and the loss is :func:`labelsmooth.linear_cross_entropy` of the hidden states
and ``lm_head.weight`` (and bias): the logits never exist and ``outputs.logits`` is None. In eval
mode (or with ``skip_logits=False``) the logits are computed as usual and the same loss is taken
from them with :func:`labelsmooth.cross_entropy`. Either way the loss is normalised as
transformers' own ``ForCausalLMLoss``:

- labels are shifted (position t predicts label t + 1, the last position predicts nothing); a
  precomputed ``shift_labels`` is used as given; ``ignore_index`` (-100) tokens count nowhere;
- without ``num_items_in_batch`` the loss is the mean over the non-ignored tokens; with it (Trainer
  passes it under gradient accumulation, the count of non-ignored shifted labels of all
  micro-batches of the step) it is their sum divided by it, so micro-batches of uneven lengths add
  up to the mean of the whole batch;
- ``config.final_logit_softcapping`` (Gemma 2 and 3) becomes ``softcap``.

The patch keeps to the architectures listed in ``SUPPORTED_MODEL_TYPES``, whose forward has been
read and tested (logits = the head of the hidden states, softcapped where the config says so);
another one (Cohere and Granite scale their logits, mixture-of-experts models add a router loss)
is refused unless ``any_architecture=True`` says its logits are just that.
``remove_from(model)``, ``patch.remove()`` or leaving ``with apply_to(...):`` restores the model.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import labelsmooth

from . import require

__all__ = ["SUPPORTED_MODEL_TYPES", "CausalLMLossPatch", "apply_to", "remove_from", "shifted_labels",
           "trainer_loss"]

# config.model_type of the causal LMs whose logits are `lm_head(hidden)` (softcapped by
# config.final_logit_softcapping where set; phi's head has a bias), read in transformers 4.57 and
# 5.18 and tested.
SUPPORTED_MODEL_TYPES = frozenset({"gemma", "gemma2", "gemma3_text", "gpt2", "llama", "mistral", "olmo2", "phi",
                                   "phi3", "qwen2", "qwen3"})

# Arguments the adapters set themselves; every other keyword of the labelsmooth function is an option.
_SET_BY_APPLY_TO = {"hidden", "weight", "target", "bias", "reduction", "label_smoothing", "softcap", "return_parts"}
_SET_BY_TRAINER_LOSS = {"input", "target", "reduction", "label_smoothing", "return_parts"}
# linear_cross_entropy options that mean the same for cross_entropy on the logits (eval mode).
_SHARED_WITH_LOGITS = {"ignore_index": "ignore_index", "class_weight": "weight", "distribution": "distribution",
                       "z_loss": "z_loss", "validate_args": "validate_args"}


def shifted_labels(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """A causal LM's targets: position t predicts label t + 1, the last position ``ignore_index``.

    >>> shifted_labels(torch.tensor([[5, 6, 7]]))
    tensor([[   6,    7, -100]])
    """
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def _check_option_names(options: Mapping, function: Callable, set_here: set, caller: str) -> None:
    allowed = [name for name in inspect.signature(function).parameters if name not in set_here]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{caller} got unknown loss option(s) {unknown}; the options are those of "
                         f"labelsmooth.{function.__name__}: {allowed}")


def _normalised(loss: Callable[[str], Tensor], num_items_in_batch: Tensor | int | None) -> Tensor:
    """``loss("mean")``, or ``loss("sum") / num_items_in_batch`` when the count is given."""
    if num_items_in_batch is None:
        return loss("mean")
    total = loss("sum")
    if isinstance(num_items_in_batch, Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _logits_loss(logits: Tensor, target: Tensor, num_items_in_batch, label_smoothing: float,
                 options: Mapping) -> Tensor:
    """labelsmooth.cross_entropy of logits (..., K) and targets (...), normalised as transformers does."""
    rows, target = logits.reshape(-1, logits.shape[-1]), target.to(logits.device).reshape(-1)
    return _normalised(lambda reduction: labelsmooth.cross_entropy(
        rows, target, reduction=reduction, label_smoothing=label_smoothing, **options), num_items_in_batch)


def trainer_loss(label_smoothing: float = 0.0, *, shift_labels: bool, **loss_options) -> Callable:
    """A ``compute_loss_func`` for ``transformers.Trainer``: labelsmooth's loss on the model's logits.

    ``Trainer(..., compute_loss_func=trainer_loss(eps, shift_labels=True))`` for a causal LM
    (``shift_labels=False`` for classification or sequence-to-sequence labels) gives the loss that
    ``TrainingArguments(label_smoothing_factor=eps)`` gives (transformers' ``LabelSmoother``):
    ``(1 - eps) nll + eps mean_c(-log p_c)``, summed over the non-ignored tokens and divided by
    their count, or by ``num_items_in_batch`` when Trainer passes it (gradient accumulation). It
    differs only where LabelSmoother gives NaN (every label of a micro-batch ignored: 0 here) or
    counts a negative label other than ``ignore_index`` as class 0 (a ValueError here).
    ``loss_options`` are those of :func:`labelsmooth.cross_entropy` (``distribution``, ``z_loss``,
    ``weight``, ``ignore_index``, ...). This path materializes the logits: for a causal LM,
    :func:`apply_to` does without them.

    >>> loss = trainer_loss(0.1, shift_labels=False)
    >>> logits, labels = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 2])
    >>> loss({"logits": logits}, labels)
    tensor(0.9547)
    >>> F.cross_entropy(logits, labels, label_smoothing=0.1)
    tensor(0.9547)
    """
    if not isinstance(shift_labels, bool):
        raise ValueError(f"shift_labels must be True (causal LM) or False, got {shift_labels!r}")
    _check_option_names(loss_options, labelsmooth.cross_entropy, _SET_BY_TRAINER_LOSS, "trainer_loss")
    ignore_index = loss_options.get("ignore_index", -100)

    def compute_loss(outputs, labels: Tensor, num_items_in_batch: Tensor | int | None = None) -> Tensor:
        if not isinstance(labels, Tensor):
            raise ValueError(f"labels must be a tensor of class indices (the batch's 'labels'), got "
                             f"{type(labels).__name__}")
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        target = shifted_labels(labels, ignore_index) if shift_labels else labels
        return _logits_loss(logits, target, num_items_in_batch, label_smoothing, loss_options)

    return compute_loss


@contextlib.contextmanager
def _head_input(head: nn.Module):
    """Within the block, calls of ``head`` record their input and see it cut to zero positions.

    The head then returns (..., 0, V) logits, costing nothing, and whatever the model does to its
    logits afterwards (a softcap) runs on an empty tensor.
    """
    captured: list[Tensor] = []

    def take_input(module: nn.Module, args: tuple) -> tuple:
        captured.append(args[0])
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(take_input)
    try:
        yield captured
    finally:
        handle.remove()


class CausalLMLossPatch:
    """The forward of a patched model (``model.forward`` while applied) and its handle.

    Made by :func:`apply_to`. ``remove()`` (or the end of a ``with`` block) restores the model's
    own forward. As an object rather than a closure, it survives ``copy.deepcopy(model)`` (the copy
    is patched too, and computes with its own weights) and pickling.
    """

    def __init__(self, model: nn.Module, label_smoothing: float, options: dict, skip_logits: bool | None) -> None:
        self.model, self.label_smoothing, self.options, self.skip_logits = model, label_smoothing, options, skip_logits
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.ignore_index = options.get("ignore_index", -100)
        self.logits_options = {_SHARED_WITH_LOGITS[k]: v for k, v in options.items() if k in _SHARED_WITH_LOGITS}
        self.saved_forward = model.__dict__.get("forward")  # another wrapper's (accelerate's hooks), kept

    @property
    def original(self) -> Callable:
        """The forward this patch stands in front of."""
        if self.saved_forward is not None:
            return self.saved_forward
        return type(self.model).forward.__get__(self.model)

    @property
    def __signature__(self) -> inspect.Signature:
        # Trainer reads the forward's signature (which batch columns to keep, loss kwargs).
        return inspect.signature(self.original)

    def __call__(self, *args, **kwargs):
        original = self.original
        signature = inspect.signature(original)
        call = signature.bind(*args, **kwargs).arguments
        for name, parameter in signature.parameters.items():
            if parameter.kind is parameter.VAR_KEYWORD:
                call.update(call.pop(name, {}))
        labels, shift_labels = call.pop("labels", None), call.pop("shift_labels", None)
        if labels is None and shift_labels is None:
            return original(**call)
        num_items_in_batch = call.pop("num_items_in_batch", None)
        return_dict = call.pop("return_dict", None)
        if return_dict is None:
            return_dict = getattr(self.model.config, "return_dict", True)
        target = shift_labels if shift_labels is not None else shifted_labels(labels, self.ignore_index)
        skip_logits = self.model.training if self.skip_logits is None else self.skip_logits
        if skip_logits:
            head = self.model.get_output_embeddings()
            with _head_input(head) as captured:
                outputs = original(**call, return_dict=True)
            if len(captured) != 1:
                raise RuntimeError(f"{type(self.model).__name__}.forward called its output head {len(captured)} "
                                   f"times (expected once); labelsmooth cannot take its loss from the hidden "
                                   f"states: remove_from(model), or apply_to(..., skip_logits=False)")
            loss, logits = self._hidden_loss(captured[0], head, target, num_items_in_batch), None
        else:
            outputs = original(**call, return_dict=True)
            logits = outputs["logits"]
            loss = _logits_loss(logits, target, num_items_in_batch, self.label_smoothing, self.logits_options)
        outputs = type(outputs)(**{**outputs, "loss": loss, "logits": logits})
        return outputs if return_dict else outputs.to_tuple()

    def _hidden_loss(self, hidden: Tensor, head: nn.Linear, target: Tensor, num_items_in_batch) -> Tensor:
        # under autocast linear_cross_entropy runs the head's matmuls in the autocast dtype itself
        weight, bias = head.weight, head.bias
        target = target.to(hidden.device)
        return _normalised(lambda reduction: labelsmooth.linear_cross_entropy(
            hidden, weight, target, bias, reduction=reduction, label_smoothing=self.label_smoothing,
            softcap=self.softcap, **self.options), num_items_in_batch)

    def remove(self) -> None:
        """Restore the model's forward (a no-op when this patch is no longer applied)."""
        if self.model.__dict__.get("forward") is self:
            if self.saved_forward is None:
                del self.model.forward
            else:
                self.model.forward = self.saved_forward

    def __enter__(self) -> CausalLMLossPatch:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return (f"CausalLMLossPatch({type(self.model).__name__}, label_smoothing={self.label_smoothing}, "
                f"softcap={self.softcap}, options={self.options})")


def _check_model(model, any_architecture: bool) -> nn.Linear:
    transformers = require("transformers", "labelsmooth.integrations.transformers.apply_to", "transformers")
    if not isinstance(model, transformers.PreTrainedModel):
        raise ValueError(f"model must be a transformers causal LM (a PreTrainedModel such as LlamaForCausalLM), "
                         f"got {type(model).__name__}")
    model_type = getattr(model.config, "model_type", None)
    if not any_architecture and model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model's config.model_type must be one of {sorted(SUPPORTED_MODEL_TYPES)}, got "
                         f"{model_type!r}: for another architecture, pass any_architecture=True if its logits "
                         f"are exactly its output head applied to the final hidden states (softcapped by "
                         f"config.final_logit_softcapping if set), or use trainer_loss(...) on the logits")
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"model's output head (get_output_embeddings()) must be an nn.Linear, "
                         f"got {type(head).__name__}")
    if "labels" not in inspect.signature(type(model).forward).parameters:
        raise ValueError(f"model's forward must take labels, and {type(model).__name__}.forward does not")
    return head


def apply_to(model: nn.Module, label_smoothing: float = 0.0, *, skip_logits: bool | None = None,
             any_architecture: bool = False, **loss_options) -> CausalLMLossPatch:
    """Make a causal LM's loss labelsmooth's fused linear cross-entropy; returns the patch.

    Per non-ignored token, with hidden state h, head W (and bias b) and the next token y::

        loss_t = (1 - eps) (-log p_y) + eps sum_c u(c | y) (-log p_c),   p = softmax(softcap(h W^T + b))

    averaged over the tokens (or summed and divided by ``num_items_in_batch``).

    Args:
        model: a transformers causal LM whose ``config.model_type`` is in ``SUPPORTED_MODEL_TYPES``.
        label_smoothing: eps, a float at most 1 (0: transformers' own loss, without the logits).
        skip_logits: None (the default): skip the logits when training and labels are given, as
            Liger-Kernel does; False: always compute them (the loss then comes from them);
            True: skip them in eval mode too.
        any_architecture: apply to an unlisted architecture (see the module docstring).
        loss_options: passed to :func:`labelsmooth.linear_cross_entropy`: ``ignore_index``,
            ``distribution``, ``z_loss``, ``class_weight``, ``chunk_size``, ``vocab_chunk_size``,
            ``filter_eps``, ``impl``, ``validate_args``. With class weights, ``num_items_in_batch``
            still counts tokens (as transformers does), not their weights.

    Applying again replaces the previous patch. Do not combine with ``TrainingArguments(
    label_smoothing_factor=...)``: Trainer would then withhold the labels and smooth the logits.

    Example:
        >>> import torch, transformers
        >>> config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...                                   num_hidden_layers=1, num_attention_heads=2)
        >>> model = transformers.LlamaForCausalLM(config).train()
        >>> ids = torch.randint(50, (2, 7), generator=torch.Generator().manual_seed(0))
        >>> with apply_to(model, label_smoothing=0.1):
        ...     out = model(input_ids=ids, labels=ids)
        >>> out.logits is None
        True
        >>> logits = model(input_ids=ids).logits                                  # unpatched again
        >>> reference = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), label_smoothing=0.1)
        >>> torch.allclose(out.loss, reference)
        True
    """
    head = _check_model(model, any_architecture)
    if isinstance(label_smoothing, Tensor) or isinstance(label_smoothing, bool) \
            or not isinstance(label_smoothing, (int, float)):
        raise ValueError(f"label_smoothing must be a float at most 1, got {label_smoothing!r}")
    if skip_logits not in (None, True, False):
        raise ValueError(f"skip_logits must be None, True or False, got {skip_logits!r}")
    _check_option_names(loss_options, labelsmooth.linear_cross_entropy, _SET_BY_APPLY_TO, "apply_to")
    if head.weight.device.type != "meta":  # the values, on a one-token stand-in for the head
        with torch.no_grad():
            stand_in = head.weight.new_zeros(head.weight.shape[0], 1)
            labelsmooth.linear_cross_entropy(stand_in[:1], stand_in, torch.zeros(1, dtype=torch.long,
                                                                                 device=stand_in.device),
                                             label_smoothing=label_smoothing, **loss_options)
    remove_from(model)
    patch = CausalLMLossPatch(model, float(label_smoothing), dict(loss_options), skip_logits)
    model.forward = patch
    return patch


def remove_from(model: nn.Module) -> bool:
    """Undo :func:`apply_to`; True if a patch was removed, False if there was none."""
    patch = getattr(model, "__dict__", {}).get("forward")
    if isinstance(patch, CausalLMLossPatch):
        patch.remove()
        return True
    return False
