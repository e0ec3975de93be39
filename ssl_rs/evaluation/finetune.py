"""Fine-tuning protocol: train a copy of the whole backbone plus a new head on the train split,
then score it on the evaluation split.

The recipe follows the GeoRank authors' downstream fine-tuning (``FinetuneLinearClassifier`` in
``eval_base.py`` of github.com/tomburgert/georank, run from ``ssl_experiments.py``): AdamW on the
backbone and a linear head, ``lr = optim.min_lr = 1e-3`` and ``weight_decay = 0.01``
(``conf/ssl_config.yaml``), 30 epochs, a per-step linear warmup from ``lr / 10`` followed by a
cosine decay to ``lr / 10`` (their ``LinearWarmupCosineAnnealingLR``), random flips as the
training augmentation. Where this module differs, and why:

- ``backbone_lr_scale=0.1``: the backbone learns at a tenth of the head's rate, so the randomly
  initialised head does not wreck pretrained features in the first steps (GeoRank trains both at
  the same rate: pass ``backbone_lr_scale=1`` for their recipe).
- ``layer_decay`` (off by default): BEiT/MAE layer-wise learning-rate decay for timm models,
  through timm's ``param_groups_layer_decay`` (1-D parameters and the model's
  ``no_weight_decay()`` names then get no weight decay, as in timm's optimiser factory).
- warmup: ``min(100, total_steps // 10)`` steps. GeoRank warms up for 100 steps when a run is
  longer than 100 steps and none otherwise, and for 10000 steps beyond 10000 steps (nearly the
  whole run at that length), which is not copied.
- augmentation: a random 90-degree turn and random flips (:class:`RandomFlipRot90`, an exact
  pixel permutation), applied after the normalisation, on the device.

Task-specific pieces (head, model around backbone and head, targets, loss, augmentation, metrics)
live in one small object, :class:`ClassificationTask`; :data:`TASKS` maps a task name to the
function that makes it for a dataset, so another task (segmentation) is one more entry.

Deterministic for a ``seed`` on the CPU: the head's initialisation, the shuffling, the
augmentation and any dropout draw from the seeded RNG inside ``torch.random.fork_rng`` (the
caller's RNG state is left as it was). The caller's backbone is deep-copied and never changed.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.loader import make_loader
from ..errors import ConfigError, DataError
from ..progress import Progress
from .features import DEFAULT_PRECISION, _model_device, autocast, check_precision, grad_scaler, optimizer_step
from .linear import georank_schedule
from .metrics import multi_label_metrics, single_label_metrics

#: GeoRank's fine-tuning defaults (see the module docstring) and this module's own
DEFAULT_EPOCHS = 30
DEFAULT_LR = 1e-3
DEFAULT_WEIGHT_DECAY = 0.01
DEFAULT_BACKBONE_LR_SCALE = 0.1
#: start and end of the schedule, as fractions of the learning rate (GeoRank: lr / 10 both)
SCHEDULE_FLOOR = 0.1
#: ssl-rs: warmup over min(100, a tenth of the steps) then cosine (:func:`warmup_cosine`); georank: the
#: authors' scheduler exactly (:func:`~ssl_rs.evaluation.linear.georank_schedule`: 10000 warmup steps
#: beyond 10000, 100 beyond 100, and at lr / 10 throughout for shorter runs)
SCHEDULES = ("ssl-rs", "georank")
#: probability threshold of a positive in the multi-label F1 scores
F1_THRESHOLD = 0.5


# ----------------------------------------------------------------------------- options
def check_finetune_options(*, epochs: Any = DEFAULT_EPOCHS, lr: Any = DEFAULT_LR,
                           backbone_lr_scale: Any = DEFAULT_BACKBONE_LR_SCALE, layer_decay: Any = None,
                           weight_decay: Any = DEFAULT_WEIGHT_DECAY, warmup_steps: Any = None,
                           schedule: Any = "ssl-rs", batch_size: Any = 1,
                           names: Optional[Dict[str, str]] = None) -> None:
    """One-line ConfigError for a fine-tuning option no run can use; ``names`` maps a parameter
    to the option it came from (``{"lr": "--lr"}``, ``{"lr": "eval.finetune_lr"}``)."""
    names = names or {}

    def fail(param: str, rule: str, value: Any) -> None:
        raise ConfigError(f"{names.get(param, param)}: must be {rule}, got {value!r}")

    def whole(value: Any) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    def real(value: Any) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

    if not (whole(epochs) and epochs >= 1):
        fail("epochs", "an integer >= 1", epochs)
    if not (real(lr) and lr > 0):
        fail("lr", "a learning rate > 0", lr)
    if not (real(backbone_lr_scale) and backbone_lr_scale > 0):
        fail("backbone_lr_scale", "> 0 (the backbone's learning rate is lr times this; for a frozen backbone "
             "use the linear probe)", backbone_lr_scale)
    if layer_decay is not None and not (real(layer_decay) and 0 < layer_decay <= 1):
        fail("layer_decay", "in (0, 1] (each layer below the top learns at this fraction of the one above), "
             "or left out for none", layer_decay)
    if not (real(weight_decay) and weight_decay >= 0):
        fail("weight_decay", ">= 0", weight_decay)
    if warmup_steps is not None and not (whole(warmup_steps) and warmup_steps >= 0):
        fail("warmup_steps", "an integer >= 0 (or left out for the default)", warmup_steps)
    if not (whole(batch_size) and batch_size >= 1):
        fail("batch_size", "an integer >= 1", batch_size)
    if schedule not in SCHEDULES:
        fail("schedule", f"one of {', '.join(SCHEDULES)}", schedule)
    if schedule == "georank" and warmup_steps is not None:
        raise ConfigError(f"{names.get('warmup_steps', 'warmup_steps')}: the georank schedule sets its own warmup "
                          "(10000 steps beyond 10000, 100 beyond 100, else none); leave it out")


def _backbone_name(backbone: nn.Module) -> str:
    return str(getattr(backbone, "name", type(backbone).__name__))


def layered_model(backbone: nn.Module) -> Optional[nn.Module]:
    """The timm model inside ``backbone`` whose layers layer-wise decay can rank (one with a
    ``group_matcher``: timm's ViTs, ResNets, ConvNeXts ...), or None."""
    for module in (backbone, getattr(backbone, "model", None)):
        if isinstance(module, nn.Module) and callable(getattr(module, "group_matcher", None)):
            return module
    return None


def check_layer_decay(backbone: nn.Module, layer_decay: Optional[float], option: str = "layer_decay") -> None:
    """A ConfigError naming ``option`` when ``layer_decay`` is given for a backbone without layers
    to decay (a tiny CNN, an encoder that is not a timm model)."""
    if layer_decay is not None and layered_model(backbone) is None:
        raise ConfigError(f"{option}: backbone {_backbone_name(backbone)!r} has no layers to decay (layer-wise "
                          "learning-rate decay needs a timm model, such as vit_tiny, vit_small or resnet18); "
                          "leave the option out")


def param_groups(backbone: nn.Module, head: nn.Module, *, lr: float, backbone_lr_scale: float = DEFAULT_BACKBONE_LR_SCALE,
                 layer_decay: Optional[float] = None, weight_decay: float = DEFAULT_WEIGHT_DECAY,
                 option: str = "layer_decay") -> List[Dict[str, Any]]:
    """The optimiser's parameter groups: the head at ``lr``; the backbone at
    ``lr * backbone_lr_scale``, and with ``layer_decay`` each of its layers (timm's grouping)
    at that times ``layer_decay ** (layers above it)``, without weight decay on 1-D parameters
    and the model's ``no_weight_decay()`` names. Each group carries its ``lr``, ``weight_decay``
    and ``name``; every trainable parameter is in exactly one group."""
    groups: List[Dict[str, Any]] = [
        {"name": "head", "params": [p for p in head.parameters() if p.requires_grad], "lr": lr,
         "weight_decay": weight_decay, "lr_scale": 1.0},
    ]
    base = lr * backbone_lr_scale
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    if layer_decay is None:
        groups.append({"name": "backbone", "params": trainable, "lr": base, "weight_decay": weight_decay,
                       "lr_scale": backbone_lr_scale})
        return [g for g in groups if g["params"]]
    check_layer_decay(backbone, layer_decay, option)
    from timm.optim import param_groups_layer_decay

    model = layered_model(backbone)
    assert model is not None
    no_decay = model.no_weight_decay() if callable(getattr(model, "no_weight_decay", None)) else ()
    layered = param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_decay,
                                       layer_decay=layer_decay)
    seen = set()
    for i, group in enumerate(layered):
        seen.update(id(p) for p in group["params"])
        groups.append({"name": f"backbone.layer_group{i}", "params": list(group["params"]),
                       "lr": base * group["lr_scale"], "weight_decay": group["weight_decay"],
                       "lr_scale": backbone_lr_scale * group["lr_scale"]})
    rest = [p for p in trainable if id(p) not in seen]  # parameters of a wrapper around the timm model
    if rest:
        groups.append({"name": "backbone.rest", "params": rest, "lr": base, "weight_decay": weight_decay,
                       "lr_scale": backbone_lr_scale})
    return [g for g in groups if g["params"]]


def warmup_cosine(total_steps: int, warmup_steps: Optional[int] = None) -> Callable[[int], float]:
    """The learning-rate factor of step ``s`` (0-based): linear from ``SCHEDULE_FLOOR`` to 1 over
    the warmup (default ``min(100, total_steps // 10)`` steps), then a cosine back down to
    ``SCHEDULE_FLOOR`` at the last step."""
    warmup = min(100, total_steps // 10) if warmup_steps is None else min(int(warmup_steps), total_steps)
    decay = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return SCHEDULE_FLOOR + (1.0 - SCHEDULE_FLOOR) * step / warmup
        progress = min(1.0, (step - warmup) / decay)
        return SCHEDULE_FLOOR + (1.0 - SCHEDULE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


# ----------------------------------------------------------------------------- tasks
class _Classifier(nn.Module):
    """``head(backbone(x))``; a backbone returning a tuple contributes its first element."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        out = self.backbone(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(f"backbone: expected (B, D) features for a batch of {x.shape[0]}, got {shape}")
        return self.head(out)


def multi_label_f1(scores, targets, threshold: float = F1_THRESHOLD) -> Dict[str, float]:
    """Micro and macro F1 (percent) of ``sigmoid(scores) >= threshold`` against multi-hot targets;
    macro averages over the classes with at least one positive target, like ``ap_macro``."""
    from sklearn.metrics import f1_score

    s = torch.as_tensor(scores).float()
    t = torch.as_tensor(targets).float().numpy().astype(np.int64)
    pred = (torch.sigmoid(s) >= threshold).numpy().astype(np.int64)
    present = t.sum(axis=0) > 0
    return {
        "f1_micro": float(f1_score(t, pred, average="micro", zero_division=0) * 100.0),
        "f1_macro": float(f1_score(t[:, present], pred[:, present], average="macro", zero_division=0) * 100.0),
    }


class ClassificationTask:
    """Image classification: a linear head on the backbone's pooled features; cross-entropy and
    ``acc_micro``/``acc_macro`` for class indices, BCE and ``ap_macro``/``ap_micro`` (the linear
    probe's names) plus ``f1_micro``/``f1_macro`` for multi-hot targets.

    What :func:`finetune` asks of a task: ``name``, ``target_key``, ``num_classes``,
    ``head(backbone)``, ``model(backbone, head)``, ``targets(batch, device)``,
    ``augment(images, targets)``, ``loss(logits, targets)``, ``outputs(logits)`` (what is kept
    of an evaluation batch, on the CPU) and ``metrics(outputs, targets)``."""

    name = "classification"

    def __init__(self, num_classes: int, multi_label: bool = False, target_key: Optional[str] = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
            raise ConfigError(f"classification: needs at least 2 classes, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.multi_label = bool(multi_label)
        self.target_key = target_key or ("labels" if multi_label else "label")
        self._flip_rot90: Optional[nn.Module] = None

    def head(self, backbone: nn.Module) -> nn.Module:
        num_features = getattr(backbone, "num_features", None)
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral) or num_features < 1:
            raise ConfigError(f"backbone {_backbone_name(backbone)!r}: has no num_features (the width of its "
                              f"(B, D) features) to size the head, got {num_features!r}")
        return nn.Linear(int(num_features), self.num_classes)

    def model(self, backbone: nn.Module, head: nn.Module) -> nn.Module:
        return _Classifier(backbone, head)

    def targets(self, batch: Dict[str, Any], device: torch.device) -> Tensor:
        if self.target_key not in batch:
            raise DataError(f"batch has no {self.target_key!r} key (keys: {sorted(batch)})")
        t = torch.as_tensor(batch[self.target_key]).to(device, non_blocking=True)
        return t.float() if self.multi_label else t.long()

    def augment(self, images: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
        if self._flip_rot90 is None:
            from ..augmentations.transforms import RandomFlipRot90

            self._flip_rot90 = RandomFlipRot90()
        return self._flip_rot90.to(images.device)(images), targets

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, targets)
        return F.cross_entropy(logits, targets)

    def outputs(self, logits: Tensor) -> Tensor:
        return logits.detach().float().cpu()

    def metrics(self, outputs: Tensor, targets: Tensor) -> Dict[str, float]:
        if self.multi_label:
            return {**multi_label_metrics(outputs, targets), **multi_label_f1(outputs, targets)}
        return single_label_metrics(outputs, targets.long(), num_classes=self.num_classes)


def classification_task(dataset: Any, preprocess: Optional[nn.Module] = None) -> ClassificationTask:
    """The classification task of a labelled dataset (a :class:`~ssl_rs.data.dataset.GeoDataset`);
    ``preprocess`` changes nothing for it (its targets have no geometry)."""
    key = getattr(dataset, "target_key", None)
    if key is None:
        raise ConfigError(f"{getattr(dataset, 'path', 'data')}: label/labels: the file has no labels to fine-tune on")
    return ClassificationTask(int(dataset.num_classes), multi_label=bool(dataset.multi_label), target_key=key)


def _segmentation_task(dataset: Any, preprocess: Optional[nn.Module] = None) -> Any:
    """The segmentation task of a dataset with per-pixel masks
    (:class:`ssl_rs.evaluation.segmentation.SegmentationTask`: the probe's decoder, no-data ignored;
    its labels follow ``preprocess``'s resize and crop, by nearest neighbour)."""
    from .segmentation import segmentation_task

    return segmentation_task(dataset, preprocess=preprocess)


#: task name -> function making the task for the train dataset and the evaluation's preprocess
TASKS: Dict[str, Callable[..., Any]] = {"classification": classification_task, "segmentation": _segmentation_task}


def make_task(task: Union[str, Any], dataset: Any, preprocess: Optional[nn.Module] = None) -> Any:
    if not isinstance(task, str):
        return task  # a task object made by the caller
    if task not in TASKS:
        raise ConfigError(f"task: unknown fine-tuning task {task!r} (use {', '.join(TASKS)})")
    return TASKS[task](dataset, preprocess)


# ----------------------------------------------------------------------------- protocol
def finetune(
    backbone: nn.Module,
    train: Any,
    evaluate_on: Any,
    *,
    task: Union[str, Any] = "classification",
    head_factory: Optional[Callable[[nn.Module], nn.Module]] = None,
    preprocess: Optional[Callable[[Tensor], Tensor]] = None,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    backbone_lr_scale: float = DEFAULT_BACKBONE_LR_SCALE,
    layer_decay: Optional[float] = None,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    warmup_steps: Optional[int] = None,
    schedule: str = "ssl-rs",
    augment: bool = True,
    batch_size: int = 256,
    num_workers: int = 0,
    seed: int = 0,
    device: Union[str, torch.device, None] = None,
    progress: bool = True,
    names: Optional[Dict[str, str]] = None,
    precision: Optional[str] = DEFAULT_PRECISION,
) -> Dict[str, float]:
    """Fine-tune a copy of ``backbone`` with a new head on ``train`` and score it on ``evaluate_on``.

    Args:
        backbone: ``forward(x) -> (B, D)`` with ``num_features = D``; deep-copied, never changed.
        train, evaluate_on: datasets of dicts with ``image`` ((C, H, W), uint16 or float) and the
            task's target (a :class:`~ssl_rs.data.dataset.GeoDataset` split).
        task: a name in :data:`TASKS` (made for ``train``) or a task object (see
            :class:`ClassificationTask` for what one provides).
        head_factory: ``head_factory(backbone) -> nn.Module`` instead of the task's head.
        preprocess: applied to each image batch on the device (the harness passes its
            :class:`~ssl_rs.augmentations.Preprocess`); default: ``train``'s band normalisation.
        epochs, lr, backbone_lr_scale, layer_decay, weight_decay, warmup_steps: the recipe (module
            docstring); ``augment=False`` trains without the flips and turns.
        schedule: the learning-rate schedule per step, one of :data:`SCHEDULES`.
        batch_size, num_workers: of the training and the evaluation loaders.
        seed: seeds the head, the shuffling, the augmentation and dropout.
        device: where to train (default: the backbone's device).
        progress: show progress on stderr (:mod:`ssl_rs.progress`).
        names: parameter -> the option it came from, for error messages.
        precision: ``32-true``, or ``bf16-mixed`` / ``16-mixed`` (CUDA, with loss scaling) for the
            model's forward under ``torch.autocast``; the loss and the metrics stay float32.

    Returns:
        The task's metrics on ``evaluate_on`` (percent) and ``train_loss``, the mean loss of the
        last epoch.
    """
    check_finetune_options(epochs=epochs, lr=lr, backbone_lr_scale=backbone_lr_scale, layer_decay=layer_decay,
                           weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=schedule,
                           batch_size=batch_size, names=names)
    names = names or {}
    check_layer_decay(backbone, layer_decay, names.get("layer_decay", "layer_decay"))
    dev = torch.device(device) if device is not None else _model_device(backbone)
    precision = check_precision(precision, dev, names.get("precision", "precision"))
    if preprocess is None:
        from ..augmentations import Preprocess

        preprocess = Preprocess(int(train.size[0]), train.band_mean, train.band_std).to(dev)
    the_task = make_task(task, train, preprocess)  # segmentation labels follow the images' geometry
    for ds, what in ((train, "train"), (evaluate_on, "evaluation")):
        if len(ds) == 0:
            raise DataError(f"{getattr(ds, 'path', what)}: the {what} split has no samples to fine-tune on")

    n = len(train)
    # BatchNorm cannot train on a lone sample: a last batch of one is dropped
    drop_last = n > batch_size and n % batch_size == 1
    loader_generator = torch.Generator().manual_seed(seed)
    pin = dev.type == "cuda"
    train_loader = make_loader(train, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                               generator=loader_generator, num_workers=num_workers, pin_memory=pin)
    eval_loader = make_loader(evaluate_on, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                              pin_memory=pin)
    steps_per_epoch = len(train_loader)
    total_steps = epochs * steps_per_epoch
    cuda = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.inference_mode(False), torch.enable_grad():
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(dev):
                torch.cuda.manual_seed(seed)
        tuned = copy.deepcopy(backbone).to(dev)
        for p in tuned.parameters():
            p.requires_grad_(True)
        head = (head_factory or the_task.head)(tuned).to(dev)
        model = the_task.model(tuned, head).to(dev)
        groups = param_groups(tuned, head, lr=lr, backbone_lr_scale=backbone_lr_scale, layer_decay=layer_decay,
                              weight_decay=weight_decay, option=names.get("layer_decay", "layer_decay"))
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
        factor = (georank_schedule(epochs, n, batch_size) if schedule == "georank"
                  else warmup_cosine(total_steps, warmup_steps))
        lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        scaler = grad_scaler(precision, dev)

        train_loss = float("nan")
        with Progress(total_steps, "finetune", "step", enabled=progress) as shown:
            for epoch in range(1, epochs + 1):
                model.train()
                loss_sum = torch.zeros((), device=dev)
                seen = 0
                for batch in train_loader:
                    images = preprocess(torch.as_tensor(batch["image"]).to(dev, non_blocking=True))
                    targets = the_task.targets(batch, dev)
                    if augment:
                        images, targets = the_task.augment(images, targets)
                    with autocast(precision, dev):
                        logits = model(images)
                    loss = the_task.loss(logits.float(), targets)
                    optimizer.zero_grad(set_to_none=True)
                    optimizer_step(loss, optimizer, scaler)
                    lr_schedule.step()
                    loss_sum += loss.detach() * images.shape[0]
                    seen += images.shape[0]
                    shown.update()
                train_loss = float(loss_sum) / max(seen, 1)
                if not math.isfinite(train_loss):
                    raise DataError(f"finetune: the loss became {train_loss} in epoch {epoch}; try a lower "
                                    f"learning rate (now {lr:g})")
                shown.set_note(f"epoch {epoch}/{epochs}, loss {train_loss:.4f}")

        model.eval()
        outputs: List[Tensor] = []
        targets_all: List[Tensor] = []
        with torch.inference_mode(), Progress(len(eval_loader), "finetune eval", "batch", enabled=progress) as shown:
            for batch in eval_loader:
                images = preprocess(torch.as_tensor(batch["image"]).to(dev, non_blocking=True))
                with autocast(precision, dev):
                    logits = model(images)
                outputs.append(the_task.outputs(logits.float()))
                targets_all.append(the_task.targets(batch, torch.device("cpu")))
                shown.update()
    result = the_task.metrics(torch.cat(outputs), torch.cat(targets_all))
    result["train_loss"] = train_loss
    return result


__all__: Sequence[str] = (
    "ClassificationTask",
    "TASKS",
    "check_finetune_options",
    "check_layer_decay",
    "classification_task",
    "finetune",
    "layered_model",
    "multi_label_f1",
    "param_groups",
    "warmup_cosine",
)
