"""Semantic segmentation probe: a frozen backbone and a light decoder trained on per-pixel masks.

The backbone gives spatial features (``feature_maps(x)``, the dense part of the backbone
contract, :mod:`ssl_rs.backbones.timm_backbones`); a small decoder maps them to per-pixel class
logits at the evaluated image size, trained with cross-entropy that ignores the file's no-data
value (``mask_nodata``). The decoders:

- ``georank`` (CNNs: maps of decreasing size): the head of the GeoRank authors' ResNet
  segmentation model, one ``ConvTranspose2d(C, classes, kernel 4, stride 2, padding 1)`` on the
  last feature map, then a bilinear upsampling (``align_corners=True``) to the input size
  (``ResNetSemSeg`` in tomburgert/georank ``models/segmentation.py`` at commit
  4754634ceb85f31e11a37702fb06c9ea5a9c248d; trained there with plain cross-entropy and AdamW).
- ``multilevel`` (ViTs: maps of one size): the token grids of a few blocks, each projected by a
  1x1 convolution, concatenated, fused by a 3x3 convolution + BatchNorm + ReLU, classified by a
  1x1 convolution and upsampled bilinearly to the input size.
- ``upernet`` (CNNs): the GeoRank authors' SSL segmentation evaluation, a UPerNet (pyramid pooling
  + feature pyramid, width 1024) and an FCN head on the last four maps (a ResNet's layers 1-4);
  :mod:`ssl_rs.evaluation.upernet`. Maps of one size (ViTs) are refused.
- ``auto`` (default): ``multilevel`` when every map has the same size, else ``georank``.

Training (``recipe``, :data:`RECIPES`): ``ssl-rs`` (default), AdamW (lr 1e-3, weight decay 1e-2)
with a per-step cosine schedule; ``georank``, the authors' UPerNet recipe: SGD (lr 0.02, momentum
0.9, weight decay 1e-4) at a constant rate, in batches of 512 (:func:`evaluate_segmentation`).
``epochs`` passes over the train split. The frozen backbone's maps are computed once and kept
while they fit in ``cache_bytes`` (then every epoch reuses them, shuffled by a private generator);
otherwise they are recomputed batch by batch each epoch. Deterministic for a given ``seed``; the
global RNG is untouched.

Metrics (percent, like every protocol; :class:`ConfusionMatrix`): ``miou`` (mean IoU), ``f1_macro``
(mean per-class F1), ``pixel_acc`` (overall pixel accuracy) and ``iou_<class>`` per class, all
over the pixels whose label is not the no-data value. A class absent from both the labels and the
predictions has no IoU: it is left out of the per-class entries and of the means. When the
evaluated size differs from the data's, the labels go through the images' geometry (centre crop,
resize) with nearest-neighbour resampling, never bilinear, so no label is invented.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..progress import Progress
from .features import DEFAULT_PRECISION, autocast, check_precision, grad_scaler, optimizer_step
from .upernet import GEORANK_RECIPE, upernet_decoder

DECODERS = ("auto", "georank", "multilevel", "upernet")
DEFAULT_EPOCHS = 20
DEFAULT_LR = 1e-3
#: the decoder's optimisation, by name (``recipe``): ``optimizer`` (adamw / sgd), ``lr``, ``momentum``
#: (sgd), ``weight_decay``, ``schedule`` (cosine per step / constant) and ``batch_size`` (the train
#: batches of :func:`evaluate_segmentation`; None: its ``batch_size``)
RECIPES: Dict[str, Dict[str, Any]] = {
    "ssl-rs": {"optimizer": "adamw", "lr": DEFAULT_LR, "momentum": None, "weight_decay": 1e-2,
               "schedule": "cosine", "batch_size": None},
    "georank": GEORANK_RECIPE,  # ssl_rs/evaluation/upernet.py
}
#: cross-entropy's ignore value when the data declares no no-data value
NO_IGNORE = -100
Device = Union[str, torch.device, None]


# ----------------------------------------------------------------------------- labels
def resize_labels(masks: Tensor, size: Union[int, Tuple[int, int]]) -> Tensor:
    """(B, H, W) integer labels resized to ``size`` by nearest-neighbour (pixel centres, as PIL
    and ``nearest-exact``): every output value is one of the input's. Same dtype and device."""
    if masks.ndim != 3:
        raise ConfigError(f"masks: expected (B, H, W) labels, got shape {tuple(masks.shape)}")
    out = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(masks.shape[-2:]) == out:
        return masks
    resized = F.interpolate(masks[:, None].float(), size=out, mode="nearest-exact")
    return resized[:, 0].to(masks.dtype)


def label_geometry(masks: Tensor, preprocess: Optional[nn.Module]) -> Tensor:
    """The labels at the geometry ``preprocess`` (an :class:`ssl_rs.augmentations.Preprocess`)
    gives the images: the same centre crop and resize (nearest-neighbour), then the same final
    centre crop. Without one, the labels unchanged."""
    if preprocess is None:
        return masks
    resize = getattr(preprocess, "resize", None)
    if resize is not None:
        fraction = getattr(resize, "crop_fraction", 1.0)
        if fraction < 1:
            h, w = masks.shape[-2:]
            ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
            top, left = (h - ch) // 2, (w - cw) // 2
            masks = masks[..., top : top + ch, left : left + cw]
        masks = resize_labels(masks, int(resize.size))
    crop = getattr(preprocess, "crop", None)
    if crop is not None:
        top, left = (masks.shape[-2] - crop) // 2, (masks.shape[-1] - crop) // 2
        masks = masks[..., top : top + crop, left : left + crop]
    return masks


# ----------------------------------------------------------------------------- metrics
class ConfusionMatrix:
    """Counts of (label, prediction) pixel pairs over the labelled pixels (``ignore_index`` left
    out); :meth:`metrics` turns them into the segmentation metrics, in percent."""

    def __init__(self, num_classes: int, ignore_index: Optional[int] = None, what: str = "mask"):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes: must be an integer >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.what = what
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """``preds``: class indices, or (B, C, H, W) scores (argmax over C); ``targets``: labels of
        the predictions' shape. A label that is neither a class nor the no-data value is a DataError."""
        if preds.ndim == targets.ndim + 1:
            preds = preds.argmax(dim=1)
        if preds.shape != targets.shape:
            raise ConfigError(f"preds: shape {tuple(preds.shape)} does not match the labels' {tuple(targets.shape)}")
        targets = targets.long()
        valid = check_labels(targets, self.num_classes, self.ignore_index, self.what)
        index = targets[valid] * self.num_classes + preds[valid].long()
        self.counts += torch.bincount(index, minlength=self.num_classes ** 2).view(
            self.num_classes, self.num_classes).cpu()

    def metrics(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
        """``miou``, ``f1_macro``, ``pixel_acc`` and ``iou_<class>`` (``class_names``, default the
        indices), in percent; see the module docstring for absent classes."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ConfigError(f"class_names: {len(names)} names for {self.num_classes} classes")
        counts = self.counts.double()
        total = counts.sum()
        if total == 0:
            raise DataError(f"{self.what}: no labelled pixels to evaluate (every pixel is no-data)")
        tp = counts.diagonal()
        fp = counts.sum(dim=0) - tp  # predicted as the class, labelled otherwise
        fn = counts.sum(dim=1) - tp  # labelled as the class, predicted otherwise
        union = tp + fp + fn
        seen = union > 0
        iou = tp[seen] / union[seen]
        f1 = 2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen])
        out = {"miou": float(iou.mean() * 100), "f1_macro": float(f1.mean() * 100),
               "pixel_acc": float(tp.sum() / total * 100)}
        for name, value in zip([n for n, s in zip(names, seen.tolist()) if s], iou.tolist()):
            out[f"iou_{name}"] = value * 100
        return out


def check_labels(targets: Tensor, num_classes: int, ignore_index: Optional[int], what: str = "mask") -> Tensor:
    """The boolean map of labelled pixels; a DataError naming ``what`` for a label that is neither
    a class index nor the no-data value."""
    valid = targets != ignore_index if ignore_index is not None else torch.ones_like(targets, dtype=torch.bool)
    bad = valid & ((targets < 0) | (targets >= num_classes))
    if bool(bad.any()):
        value = int(targets[bad][0])
        nodata = "" if ignore_index is None else f" or the no-data value {ignore_index}"
        raise DataError(f"{what}: value {value} is not a class index (0..{num_classes - 1}){nodata}")
    return valid


def segmentation_metrics(preds: Tensor, targets: Tensor, num_classes: int, ignore_index: Optional[int] = None,
                         class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """:class:`ConfusionMatrix` metrics of one set of predictions (class indices or (B, C, H, W)
    scores) against labels, no-data pixels (``ignore_index``) left out."""
    confusion = ConfusionMatrix(num_classes, ignore_index)
    confusion.update(torch.as_tensor(preds), torch.as_tensor(targets))
    return confusion.metrics(class_names)


def segmentation_loss(logits: Tensor, targets: Tensor, ignore_index: Optional[int] = None) -> Tensor:
    """Cross-entropy over the labelled pixels (``ignore_index`` left out); 0 (with a gradient)
    for a batch without any, where a plain mean would be NaN."""
    targets = targets.long()
    ignore = NO_IGNORE if ignore_index is None else int(ignore_index)
    loss = F.cross_entropy(logits, targets, ignore_index=ignore, reduction="sum")
    return loss / (targets != ignore).sum().clamp(min=1)


# ----------------------------------------------------------------------------- decoders
@contextlib.contextmanager
def _kept_modes(module: nn.Module):
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, was_training in modes:
            m.training = was_training


class GeoRankHead(nn.Module):
    """The GeoRank authors' ResNet head (see the module docstring): a stride-2 transposed
    convolution on the last feature map, then bilinear upsampling to the input size."""

    def __init__(self, in_channels: Sequence[int], num_classes: int):
        super().__init__()
        self.upsample_transpose = nn.ConvTranspose2d(in_channels[-1], num_classes, kernel_size=4, stride=2, padding=1)

    def forward(self, maps: Sequence[Tensor], size: Tuple[int, int]) -> Tensor:
        x = self.upsample_transpose(maps[-1])
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return x


class MultiLevelHead(nn.Module):
    """Maps of a few ViT blocks, projected (1x1), brought to the finest grid, concatenated, fused
    (3x3 conv + BatchNorm + ReLU), classified (1x1) and upsampled bilinearly to the input size."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, hidden: int = 128):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(c, hidden, kernel_size=1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(hidden * len(in_channels), hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(hidden, num_classes, kernel_size=1)

    def forward(self, maps: Sequence[Tensor], size: Tuple[int, int]) -> Tensor:
        grid = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        projected = []
        for project, m in zip(self.project, maps):
            p = project(m)
            if p.shape[-2:] != grid:
                p = F.interpolate(p, size=grid, mode="bilinear", align_corners=False)
            projected.append(p)
        x = self.classifier(self.fuse(torch.cat(projected, dim=1)))
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


def check_decoder(decoder: str, option: str = "decoder") -> str:
    if decoder not in DECODERS:
        raise ConfigError(f"{option}: unknown decoder {decoder!r} (use {', '.join(DECODERS)})")
    return decoder


def build_decoder(decoder: str, maps: Sequence[Tensor], num_classes: int) -> nn.Module:
    """The decoder ``decoder`` for feature maps shaped like ``maps``; ``auto``: ``multilevel`` when
    they all have one size (a ViT), else ``georank`` (a CNN)."""
    check_decoder(decoder)
    if decoder == "upernet":
        return upernet_decoder(maps, num_classes)
    if decoder == "auto":
        decoder = "multilevel" if len({tuple(m.shape[-2:]) for m in maps}) == 1 else "georank"
    channels = [int(m.shape[1]) for m in maps]
    return (GeoRankHead if decoder == "georank" else MultiLevelHead)(channels, num_classes)


def check_recipe(recipe: Any, option: str = "recipe") -> str:
    if not isinstance(recipe, str) or recipe not in RECIPES:
        raise ConfigError(f"{option}: unknown recipe {recipe!r} (use {', '.join(RECIPES)})")
    return recipe


def recipe_settings(recipe: str = "ssl-rs", lr: Optional[float] = None,
                    weight_decay: Optional[float] = None) -> Dict[str, Any]:
    """The settings of ``recipe`` (:data:`RECIPES`), ``lr`` and ``weight_decay`` replacing its own when given."""
    settings = dict(RECIPES[check_recipe(recipe)])
    if lr is not None:
        settings["lr"] = lr
    if weight_decay is not None:
        settings["weight_decay"] = weight_decay
    return settings


def decoder_optimizer(parameters: Iterable[nn.Parameter], settings: Dict[str, Any], total_steps: int):
    """The optimiser of :func:`recipe_settings`'s ``settings`` over ``parameters``, and its per-step
    learning-rate schedule (None for a constant rate)."""
    if settings["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=settings["lr"], momentum=settings["momentum"],
                                    weight_decay=settings["weight_decay"])
    else:
        optimizer = torch.optim.AdamW(parameters, lr=settings["lr"], weight_decay=settings["weight_decay"])
    if settings["schedule"] == "constant":
        return optimizer, None
    total = max(int(total_steps), 1)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)))


def feature_maps(backbone: nn.Module, x: Tensor) -> List[Tensor]:
    """``backbone.feature_maps(x)``, or a one-line ConfigError naming the backbone when it has none."""
    get = getattr(backbone, "feature_maps", None)
    if get is None:
        name = getattr(backbone, "name", type(backbone).__name__)
        raise ConfigError(f"backbone {name!r} ({type(backbone).__name__}) gives no spatial feature maps "
                          "(segmentation needs feature_maps(x), part of the backbone contract)")
    maps = list(get(x))
    if not maps or any(not isinstance(m, Tensor) or m.ndim != 4 for m in maps):
        raise ConfigError(f"backbone {getattr(backbone, 'name', '?')!r}: feature_maps must give (B, C, h, w) maps")
    return maps


def decoder_for(backbone: nn.Module, num_classes: int, example: Tensor, decoder: str = "auto") -> nn.Module:
    """The decoder ``decoder`` for ``backbone``'s maps, sized by one forward of ``example`` (without
    gradients, in eval mode: BatchNorm statistics are left as they were)."""
    with _kept_modes(backbone), torch.no_grad():
        backbone.eval()
        maps = feature_maps(backbone, example)
    return build_decoder(decoder, maps, num_classes)


class SegmentationModel(nn.Module):
    """A backbone and a decoder: ``forward(x) -> (B, classes, H, W)`` logits at ``x``'s size."""

    def __init__(self, backbone: nn.Module, decoder: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(feature_maps(self.backbone, x), tuple(x.shape[-2:]))


# ----------------------------------------------------------------------------- the probe
def _images_and_masks(batch: Any, dev: torch.device, preprocess: Optional[Callable[[Tensor], Tensor]]):
    if not isinstance(batch, dict) or "image" not in batch or "mask" not in batch:
        raise DataError("loader: each batch must be a dict with 'image' and 'mask' entries")
    images = torch.as_tensor(batch["image"]).to(dev, non_blocking=True)
    images = preprocess(images) if preprocess is not None else images.float()
    masks = label_geometry(torch.as_tensor(batch["mask"]).to(dev, non_blocking=True), preprocess)
    if tuple(masks.shape[-2:]) != tuple(images.shape[-2:]):
        raise DataError(f"mask: {tuple(masks.shape[-2:])} labels for {tuple(images.shape[-2:])} images")
    return images, masks


def segmentation_probe(
    backbone: nn.Module,
    train_loader: Iterable[dict],
    test_loader: Iterable[dict],
    *,
    num_classes: int,
    class_names: Optional[Sequence[str]] = None,
    nodata: Optional[int] = None,
    preprocess: Optional[Callable[[Tensor], Tensor]] = None,
    decoder: str = "auto",
    epochs: int = DEFAULT_EPOCHS,
    lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    recipe: str = "ssl-rs",
    seed: int = 0,
    device: Device = None,
    cache_bytes: int = 1 << 30,
    progress: bool = True,
    what: str = "mask",
    precision: Optional[str] = DEFAULT_PRECISION,
) -> Dict[str, float]:
    """Train a decoder on the frozen ``backbone``'s maps of ``train_loader`` and score it on
    ``test_loader``.

    Args:
        backbone: has ``feature_maps(x)``; left frozen (and in its own train/eval modes after).
        train_loader, test_loader: yield dicts with ``image`` (B, C, H, W, uint16 or float) and
            ``mask`` (B, H, W) integer labels; a shuffling train loader reshuffles each epoch.
        num_classes, class_names: the classes of the labels (``mask_classes``).
        nodata: the label of unlabelled pixels (``mask_nodata``): out of the loss and the metrics.
        preprocess: applied to the images on the device (an ``augmentations.Preprocess``); the
            labels follow its geometry by nearest-neighbour (:func:`label_geometry`).
        decoder: ``auto``, ``georank``, ``multilevel`` or ``upernet`` (module docstring).
        epochs: passes over the train split.
        lr, weight_decay: replace the recipe's (None: the recipe's own).
        recipe: the decoder's optimisation, ``ssl-rs`` (AdamW, cosine per step) or ``georank``
            (SGD with momentum at a constant rate); :data:`RECIPES`. Its batch size applies where
            :func:`evaluate_segmentation` makes the loaders; here the loaders' batches are used.
        seed: the decoder's initialisation and the cached maps' shuffling.
        device: where to run (default: the backbone's device).
        cache_bytes: keep the frozen maps of the train split when they take at most this much.
        what: how data errors name the labels (e.g. ``FILE: mask``).
        precision: ``32-true``, or ``bf16-mixed`` / ``16-mixed`` (CUDA, with loss scaling) for the
            backbone's and the decoder's forward under ``torch.autocast``; the loss and the
            confusion counts stay float32. The cached maps keep the dtype the backbone gave them
            (bf16 for a CNN under autocast), so a cached epoch feeds the decoder what a recomputed
            one would; the ``georank`` and ``multilevel`` decoders start with a convolution that
            autocast runs on bf16 inputs anyway, so float32 maps would only double the memory.

    Returns:
        The test metrics (percent; :class:`ConfusionMatrix`) and ``train_loss`` (mean of the
        last epoch).
    """
    check_segmentation_options(epochs=epochs, lr=lr, decoder=decoder, recipe=recipe)
    if weight_decay is not None and (isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real)
                                     or not weight_decay >= 0):
        raise ConfigError(f"weight_decay: must be a number >= 0, got {weight_decay!r}")
    settings = recipe_settings(recipe, lr, weight_decay)
    if device is None:
        device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
    dev = torch.device(device)
    precision = check_precision(precision, dev)
    ignore = None if nodata is None else int(nodata)
    with _kept_modes(backbone), torch.inference_mode(False), torch.enable_grad():
        backbone.eval()

        def encode(batch) -> Tuple[List[Tensor], Tensor]:
            images, masks = _images_and_masks(batch, dev, preprocess)
            check_labels(masks.long(), num_classes, ignore, what)
            with torch.no_grad(), autocast(precision, dev):
                maps = feature_maps(backbone, images)
            return maps, masks

        # one pass over the train split: the decoder's shapes, and the maps while they fit the budget
        cache: Optional[List[Tuple[List[Tensor], Tensor]]] = []
        held = 0
        size: Optional[Tuple[int, int]] = None
        head: Optional[nn.Module] = None
        n_batches = _length(train_loader)
        with Progress(n_batches, "segmentation maps", "batch", enabled=progress) as shown:
            for batch in train_loader:
                maps, masks = encode(batch)
                if head is None:
                    size = tuple(masks.shape[-2:])
                    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                        torch.manual_seed(seed)
                        head = build_decoder(decoder, maps, num_classes).to(dev)
                held += sum(m.numel() * m.element_size() for m in maps) + masks.numel() * masks.element_size()
                if held > cache_bytes:
                    cache = None
                    break
                cache.append((maps, masks))
                shown.update()
        if head is None:
            raise DataError("loader: the train split yielded no batches")
        if cache is not None:  # the cached batches, as one tensor per level
            levels = [torch.cat([maps[i] for maps, _ in cache]) for i in range(len(cache[0][0]))]
            labels = torch.cat([masks for _, masks in cache])
            batch_size = cache[0][1].shape[0]
            n = labels.shape[0]
            steps_per_epoch = math.ceil(n / batch_size)
        else:
            steps_per_epoch = n_batches or 1
        cached, cache = cache is not None, None  # the per-level tensors hold the cached maps now
        generator = torch.Generator().manual_seed(seed)
        optimizer, schedule = decoder_optimizer(head.parameters(), settings, epochs * steps_per_epoch)
        scaler = grad_scaler(precision, dev)

        def batches():
            if cached:
                order = torch.randperm(n, generator=generator).to(dev)
                for start in range(0, n, batch_size):
                    rows = order[start : start + batch_size]
                    yield [level[rows] for level in levels], labels[rows]
            else:
                for batch in train_loader:
                    yield encode(batch)

        train_loss = float("nan")
        with Progress(epochs, "segmentation", "epoch", enabled=progress) as shown:
            for epoch in range(1, epochs + 1):
                head.train()
                loss_sum, count = torch.zeros((), device=dev), 0
                for maps, masks in batches():
                    with autocast(precision, dev):
                        logits = head(maps, size)
                    loss = segmentation_loss(logits.float(), masks, ignore)
                    optimizer.zero_grad(set_to_none=True)
                    optimizer_step(loss, optimizer, scaler)
                    if schedule is not None:
                        schedule.step()
                    loss_sum += loss.detach() * masks.shape[0]
                    count += masks.shape[0]
                train_loss = float(loss_sum) / max(count, 1)
                if not math.isfinite(train_loss):
                    raise DataError(f"segmentation: the loss became {train_loss} in epoch {epoch}; try a lower "
                                    f"learning rate (now {settings['lr']:g})")
                shown.set_note(f"epoch {epoch}/{epochs}, loss {train_loss:.4f}")
                shown.update()

        head.eval()
        confusion = ConfusionMatrix(num_classes, ignore, what)
        with torch.no_grad():
            for batch in test_loader:
                maps, masks = encode(batch)
                with autocast(precision, dev):
                    logits = head(maps, tuple(masks.shape[-2:]))
                confusion.update(logits.float().argmax(dim=1), masks)
    result = confusion.metrics(class_names)
    result["train_loss"] = train_loss
    return result


def _length(loader: Iterable) -> Optional[int]:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_segmentation_options(*, epochs: Any = DEFAULT_EPOCHS, lr: Any = None, decoder: Any = "auto",
                               recipe: Any = "ssl-rs", names: Optional[Dict[str, str]] = None) -> None:
    """One-line ConfigError for a probe option no run can use; ``names`` maps a parameter to the
    option it came from (``{"epochs": "--epochs"}``). ``lr`` None: the recipe's."""
    names = names or {}
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ConfigError(f"{names.get('epochs', 'epochs')}: must be an integer >= 1, got {epochs!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, numbers.Real)
                           or not (math.isfinite(lr) and lr > 0)):
        raise ConfigError(f"{names.get('lr', 'lr')}: must be a finite number > 0, got {lr!r}")
    check_decoder(decoder, names.get("decoder", "decoder"))
    check_recipe(recipe, names.get("recipe", "recipe"))


def evaluate_segmentation(backbone: nn.Module, train: Any, test: Any, *, preprocess: Optional[nn.Module] = None,
                          batch_size: int = 256, num_workers: int = 0, epochs: int = DEFAULT_EPOCHS,
                          lr: Optional[float] = None, decoder: str = "auto", recipe: str = "ssl-rs", seed: int = 0,
                          device: Device = None, progress: bool = True,
                          precision: Optional[str] = DEFAULT_PRECISION) -> Dict[str, float]:
    """:func:`segmentation_probe` on two :class:`~ssl_rs.data.dataset.GeoDataset` splits with masks
    (``mask_classes`` name the classes, ``mask_nodata`` is ignored); the train loader is shuffled
    by a generator seeded with ``seed``. The decoder trains in batches of the recipe's batch size
    (``georank``: 512) where it has one, else of ``batch_size``, which is also the test batch."""
    from ..data.loader import make_loader

    check_masks(train, train.path)
    check_masks(test, test.path)
    dev = torch.device(device) if device is not None else None
    pin = dev is not None and dev.type == "cuda"
    train_batch = RECIPES[check_recipe(recipe)]["batch_size"] or batch_size
    train_loader = make_loader(train, batch_size=train_batch, shuffle=True, num_workers=num_workers, pin_memory=pin,
                               generator=torch.Generator().manual_seed(seed))
    test_loader = make_loader(test, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin)
    classes = list(train.mask_classes)
    return segmentation_probe(backbone, train_loader, test_loader, num_classes=len(classes), class_names=classes,
                              nodata=train.mask_nodata, preprocess=preprocess, decoder=decoder, epochs=epochs,
                              lr=lr, recipe=recipe, seed=seed, device=device, progress=progress,
                              what=f"{train.path}: mask", precision=precision)


# ----------------------------------------------------------------------------- fine-tuning
class SegmentationTask:
    """Semantic segmentation for :func:`ssl_rs.evaluation.finetune.finetune` (its task protocol,
    :class:`~ssl_rs.evaluation.finetune.ClassificationTask`): the probe's decoder on a backbone
    that now trains too, the no-data-aware cross-entropy and the probe's metrics.

    ``preprocess``: the images' evaluation geometry, which the labels then follow by
    nearest-neighbour (:func:`label_geometry`); without it, labels of another size than the logits
    are resized to theirs (nearest-neighbour). ``example_size``: the side of the dummy input that
    sizes the decoder (default 64)."""

    name = "segmentation"
    target_key = "mask"

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None, nodata: Optional[int] = None,
                 decoder: str = "auto", preprocess: Optional[nn.Module] = None, example_size: int = 64,
                 what: str = "mask"):
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
            raise ConfigError(f"segmentation: needs at least 2 mask classes, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.nodata = None if nodata is None else int(nodata)
        self.decoder = check_decoder(decoder)
        self.preprocess = preprocess
        self.example_size = int(example_size)
        self.what = what

    def head(self, backbone: nn.Module) -> nn.Module:
        device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
        in_chans = int(getattr(backbone, "in_chans", 3))
        example = torch.zeros(1, in_chans, self.example_size, self.example_size, device=device)
        return decoder_for(backbone, self.num_classes, example, self.decoder)

    def model(self, backbone: nn.Module, head: nn.Module) -> nn.Module:
        return SegmentationModel(backbone, head)

    def targets(self, batch: Dict[str, Any], device: torch.device) -> Tensor:
        if self.target_key not in batch:
            raise DataError(f"batch has no {self.target_key!r} key (keys: {sorted(batch)})")
        masks = torch.as_tensor(batch[self.target_key]).to(device, non_blocking=True)
        check_labels(masks.long(), self.num_classes, self.nodata, self.what)
        return masks

    def _fit(self, targets: Tensor, size: Sequence[int]) -> Tensor:
        """The labels at the logits' geometry."""
        if tuple(targets.shape[-2:]) == tuple(size):
            return targets
        if self.preprocess is not None:
            targets = label_geometry(targets, self.preprocess)
        return resize_labels(targets, tuple(size))

    def augment(self, images: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
        """One of the 8 flips and quarter turns per sample, the same for an image and its labels
        (they commute with the centred crops and square resizes that may still lie between them)."""
        codes = torch.randint(0, 8, (images.shape[0],)).tolist()
        images, targets = images.clone(), targets.clone()
        for code in set(codes):
            rows = torch.tensor([i for i, c in enumerate(codes) if c == code], device=images.device)
            for x in (images, targets):
                part = torch.rot90(x[rows.to(x.device)], code % 4, dims=(-2, -1))
                x[rows.to(x.device)] = part.flip(-1) if code >= 4 else part
        return images, targets

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return segmentation_loss(logits, self._fit(targets, logits.shape[-2:]), self.nodata)

    def outputs(self, logits: Tensor) -> Tensor:
        preds = logits.detach().argmax(dim=1)
        return (preds.to(torch.uint8) if self.num_classes <= 256 else preds).cpu()

    def metrics(self, outputs: Tensor, targets: Tensor) -> Dict[str, float]:
        confusion = ConfusionMatrix(self.num_classes, self.nodata, self.what)
        confusion.update(outputs, self._fit(targets, outputs.shape[-2:]))
        return confusion.metrics(self.class_names)


def segmentation_task(dataset: Any, preprocess: Optional[nn.Module] = None, decoder: str = "auto") -> SegmentationTask:
    """The segmentation task of a dataset with masks (a :class:`~ssl_rs.data.dataset.GeoDataset`)."""
    path = getattr(dataset, "path", "data")
    check_masks(dataset, path)
    size = getattr(dataset, "size", None)
    return SegmentationTask(len(dataset.mask_classes), dataset.mask_classes, dataset.mask_nodata, decoder=decoder,
                            preprocess=preprocess, example_size=int(size[0]) if size else 64, what=f"{path}: mask")


def check_masks(dataset: Any, path: Any) -> None:
    """A one-line DataError when ``dataset`` (a GeoDataset) has no per-pixel masks."""
    if not getattr(dataset, "has_mask", False):
        raise DataError(f"{path}: mask: the file has no per-pixel masks (segmentation needs them; convert with a "
                        "mask converter or `ssl-rs data synth --masks`)")
