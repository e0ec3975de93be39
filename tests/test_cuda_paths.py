"""The CUDA paths of ssl-rs, in the few minutes a GPU is lent: ``bash benchmarks/gpu_check.sh`` runs
every ``cuda``-marked test first (its step ``cuda-tests``, ``pytest -m cuda``), within its budget.

What runs on the device: a tiny pretraining (two steps, one epoch with the online k-NN) of every
registered method from its packaged synthetic config (``ssl-rs pretrain -c synthetic/<method>``),
and of MoCo v2 with each geo regularizer, on ``trainer.accelerator=gpu`` in the default GPU
precision (bf16-mixed), whose checkpoint then evaluates (``ssl-rs eval knn --checkpoint``); the
evaluation harness (k-NN, linear probe, geo probes, segmentation, fine-tuning) against the same
run on the CPU; the DataLoader with workers (the shared-memory ring) and pinned memory; the k-NN's
bf16 candidate preselection against the exact float32 k-NN of the CPU.

Without a GPU these tests are skipped ("needs CUDA", tests/conftest.py). Their logic can be checked
on the CPU all the same::

    SSL_RS_TEST_DEVICE=cpu .venv/bin/pytest -m cuda tests/test_cuda_paths.py

``SSL_RS_TEST_DEVICE=cpu`` makes the ``cuda`` marker run the tests that take the
``device_under_test`` fixture, with that fixture the CPU: the pretrainings use
``trainer.accelerator=cpu`` with ``trainer.precision=bf16-mixed`` set explicitly (on a GPU it is
left unset, and the test checks that the default is bf16-mixed), the harness runs bf16-mixed but not
16-mixed (CUDA only), and the device-against-CPU comparisons compare the CPU with itself, so they
pass trivially there: what the CPU run checks is that every path runs and every assertion is
well-formed. The tests that call ``.cuda()`` themselves (test_augmentations, test_georank) stay
skipped.

Tolerances, device against CPU, both in float32 (32-true): cuDNN convolutions use TF32 by default
(10-bit mantissa), so the tiny CNN's features differ by up to ~2e-3 relative (measured on the CPU
with inputs and weights rounded to TF32). The harness comparison keeps that default: k-NN within 2
test samples, the linear probe within 3, the geo probes' correlations within 0.02 and errors within
5%, the segmentation probe within 2 points; fine-tuning only by its first epoch's loss (its flips
and turns draw from the device's generator). The k-NN label test turns TF32 off, so that the
features agree to float32 rounding: labels identical except for the queries that are ties within
that error. Each bound is stated where it is checked.

Order: the cheapest tests first, so that a run stopped by the step's budget has the most results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, List, Mapping

import lightning as L
import numpy as np
import pytest
import torch

from ssl_rs.cli import main
from ssl_rs.config import packaged_config_dir
from ssl_rs.registry import METHODS, REGULARIZERS

pytestmark = pytest.mark.cuda

# ----------------------------------------------------------------------------- set-up
TINY_CNN_METHODS = ("mocov2", "simclr", "byol", "simsiam", "dino", "csp")
VIT_METHODS = ("mae", "satmae", "scalemae", "crossscalemae", "neighbormae")
#: (test id, packaged config, extra overrides): every registered method, then MoCo v2 with each
#: geo regularizer (its zoo config where there is one, which sets what the regularizer needs)
CASES = [(m, f"synthetic/{m}", ()) for m in METHODS.names()] + [
    (f"mocov2-{r}", f"synthetic/mocov2_{r}", ())
    if (packaged_config_dir() / "synthetic" / f"mocov2_{r}.yaml").is_file()
    else (f"mocov2-{r}", "synthetic/mocov2", (f"geo.name={r}",))
    for r in REGULARIZERS.names()
]
#: one pretraining reads its batches through DataLoader workers (the ring; pinned on a GPU)
WORKERS_CASE = "mocov2"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """240 samples of 12 bands x 16 px, 4 classes, random split (48 test samples), per-pixel masks."""
    from ssl_rs.data.synth import synthesize

    path = tmp_path_factory.mktemp("cuda_world") / "world.h5"
    synthesize(path, n=240, size=16, seed=5, num_classes=4, masks=True, progress=False)
    return path


def method_overrides(case: str, config: str) -> List[str]:
    """Tiny sizes: the ViTs one block and a 32-d one-block decoder, the CNNs 8 channels wide."""
    method = config.split("/")[1].split("_")[0]
    out = []
    if method == "mocov2":
        out.append("method.args.queue_size=64")
    if method in TINY_CNN_METHODS:
        out.append("backbone.args.width=8")
    if method in VIT_METHODS:
        out += ["backbone.args.depth=1", "method.args.decoder_dim=32", "method.args.decoder_depth=1",
                "method.args.decoder_heads=2"]
    return out


class StepRecorder(L.Callback):
    """What each training step ran on and the loss it returned; the precision Lightning used."""

    def __init__(self) -> None:
        self.losses: List[float] = []
        self.batch_devices: set = set()
        self.module_devices: set = set()
        self.precision = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.precision = trainer.precision

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        self.losses.append(float(loss.detach().float()))
        self.batch_devices.add(batch["image"].device.type)
        self.module_devices.add(pl_module.device.type)


def finite_metrics(metrics: Mapping[str, Any]) -> bool:
    return all(math.isfinite(v) for v in metrics.values() if isinstance(v, (int, float)))


# ----------------------------------------------------------------------------- k-NN bf16 path
def test_knn_bf16_preselection_on_the_device_equals_exact_float32_on_the_cpu(device_under_test, monkeypatch):
    from ssl_rs.evaluation import knn as knn_module
    from ssl_rs.evaluation.knn import knn_scores

    # half the bank and queries random (the bf16 candidates are provably right), half in a tight
    # cluster whose similarities differ by less than the bf16 error bound (the float32 redo);
    # a bank wider than 4k groups of 64 columns takes the grouped top-k
    rng = np.random.default_rng(11)
    spread = rng.standard_normal((2, 1600, 32)).astype(np.float32)
    tight = (1.0 + 0.3 * rng.standard_normal((2, 1600, 32))).astype(np.float32)
    x_train = torch.from_numpy(np.concatenate([spread[0], tight[0]]))
    x_test = torch.from_numpy(np.concatenate([spread[1, :100], tight[1, :100]]))
    y_train = torch.from_numpy(rng.integers(0, 5, 3200))

    redone, banks = [], []
    real_topk, real_bank = knn_module._topk_neighbours, knn_module._Bf16Bank

    def topk(queries, bank, *args):
        if bank.dtype == torch.float32:
            redone.append((queries.shape[0], queries.device.type))
        return real_topk(queries, bank, *args)

    def bf16_bank(bank, *args, **kwargs):
        made = real_bank(bank, *args, **kwargs)
        banks.append((made.low.dtype, made.low.device.type))
        return made

    monkeypatch.setattr(knn_module, "_topk_neighbours", topk)
    monkeypatch.setattr(knn_module, "_Bf16Bank", bf16_bank)
    fast = knn_scores(x_train, y_train, x_test, k=20, bf16_prefilter=True, chunk_size=64, bank_chunk_size=1000,
                      device=device_under_test)
    assert banks == [(torch.bfloat16, device_under_test.type)]
    assert redone and {d for _, d in redone} == {device_under_test.type}
    assert 50 <= sum(n for n, _ in redone) < len(x_test)  # the tight half, and only it, is redone in float32
    monkeypatch.undo()
    exact = knn_scores(x_train, y_train, x_test, k=20, bf16_prefilter=False, device="cpu")
    assert fast.device.type == "cpu" and fast.dtype == torch.float32
    # the same neighbours: the scores agree to float32 summation order
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-5)
    top2 = exact.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > 1e-4
    assert torch.equal(fast.argmax(dim=1)[decided], exact.argmax(dim=1)[decided])


# ----------------------------------------------------------------------------- data loader
def test_loader_with_workers_and_pinned_memory_delivers_the_in_process_batches(world, device_under_test):
    import gc

    from ssl_rs.data.dataset import GeoDataset
    from ssl_rs.data.loader import RingGeoDataset, make_loader

    train = GeoDataset(world, split="train")
    pin = device_under_test.type == "cuda"  # pinning needs an accelerator
    expected = list(make_loader(train, batch_size=16, num_workers=0))
    loader = make_loader(train, batch_size=16, num_workers=2, pin_memory=pin)
    assert isinstance(loader.dataset, RingGeoDataset)
    ring = loader.dataset.ring
    count = 0
    for want, batch in zip(expected, loader):
        count += 1
        assert list(batch) == list(want)
        if pin:
            assert all(v.is_pinned() for v in batch.values() if torch.is_tensor(v))
        on_device = {k: v.to(device_under_test, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        assert {v.device.type for v in on_device.values()} == {device_under_test.type}
        for key, value in on_device.items():
            assert torch.equal(value.cpu(), want[key]), key
    assert count == len(expected) == len(loader)
    del batch, on_device, value
    gc.collect()
    # every batch went through a ring slot, and each slot was given back once its batch was gone
    assert ring.overflows == 0
    assert ring.busy() == 0


# ----------------------------------------------------------------------------- k-NN labels
def near_ties(scores: torch.Tensor, sims: torch.Tensor, k: int, sim_tol: float, score_tol: float) -> torch.Tensor:
    """Queries whose label may change when every similarity moves by up to ``sim_tol``: their
    k-th and (k+1)-th neighbours are closer than that, or their two best class scores are closer
    than ``score_tol``, what such a move can do to the scores."""
    top2 = scores.topk(2, dim=1).values
    ranked = sims.topk(k + 1, dim=1).values
    return ((ranked[:, k - 1] - ranked[:, k]) <= sim_tol) | ((top2[:, 0] - top2[:, 1]) <= score_tol)


def test_knn_on_device_features_gives_the_cpu_labels_except_ties(world, device_under_test):
    # full float32 convolutions: with TF32 (cuDNN's default) the features move by ~1e-3, and most
    # queries of a random CNN's features would then count as ties (test_harness_... covers TF32)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        check_knn_labels_except_ties(world, device_under_test)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_knn_labels_except_ties(world: Path, device_under_test: torch.device) -> None:
    import torch.nn.functional as F

    from ssl_rs.augmentations import Preprocess
    from ssl_rs.backbones import create_backbone
    from ssl_rs.data.dataset import GeoDataset
    from ssl_rs.data.loader import make_loader
    from ssl_rs.evaluation.features import extract_features
    from ssl_rs.evaluation.knn import knn_scores

    train, test = (GeoDataset(world, split=s) for s in ("train", "test"))
    torch.manual_seed(0)
    backbone = create_backbone("tiny_cnn", in_chans=train.in_chans, width=8)

    def features(device):
        model = backbone.to(device)
        preprocess = Preprocess(train.size[0], train.band_mean, train.band_std).to(device)
        return [extract_features(model, make_loader(ds, batch_size=32), preprocess=preprocess, device=device,
                                 progress=False) for ds in (train, test)]

    (x_train, y_train), (x_test, _) = features(torch.device("cpu"))
    (d_train, d_y_train), (d_test, _) = features(device_under_test)
    assert d_train.device.type == "cpu" and d_train.dtype == torch.float32  # stored on the CPU, float32
    assert torch.equal(d_y_train, y_train)
    torch.testing.assert_close(d_train, x_train, rtol=1e-4, atol=1e-4 * float(x_train.abs().max()))
    torch.testing.assert_close(d_test, x_test, rtol=1e-4, atol=1e-4 * float(x_train.abs().max()))

    k, temperature = 5, 0.07
    cpu_scores = knn_scores(x_train, y_train, x_test, k=k, temperature=temperature, num_classes=train.num_classes,
                            device="cpu")
    dev_scores = knn_scores(d_train.to(device_under_test), y_train.to(device_under_test),
                            d_test.to(device_under_test), k=k, temperature=temperature,
                            num_classes=train.num_classes, device=device_under_test)
    assert dev_scores.device.type == "cpu"

    def relative_error(d, x):
        return float(((d - x).norm(dim=1) / x.norm(dim=1)).max())

    # a cosine moves by at most twice the relative errors of its two features (plus float32
    # rounding); a vote weight exp((s - s_max) / T) by 2 sim_tol / T relative, a normalised class
    # score by at most twice that
    sim_tol = 2 * (relative_error(d_test, x_test) + relative_error(d_train, x_train)) + 1e-6
    score_tol = 4 * sim_tol / temperature + 1e-6
    cos = F.normalize(x_test, dim=1) @ F.normalize(x_train, dim=1).T
    ties = near_ties(cpu_scores, cos, k, sim_tol, score_tol)
    differ = cpu_scores.argmax(dim=1) != dev_scores.argmax(dim=1)
    assert not (differ & ~ties).any(), (f"{int((differ & ~ties).sum())} of {len(differ)} k-NN labels differ beyond "
                                        f"near-ties (similarity tolerance {sim_tol:.2g}, {int(ties.sum())} near-ties)")
    assert ties.float().mean() < 0.25, f"{int(ties.sum())} near-ties of {len(ties)}: the comparison would mean little"
    decided = ~ties
    torch.testing.assert_close(dev_scores[decided], cpu_scores[decided], rtol=0, atol=score_tol)


# ----------------------------------------------------------------------------- evaluation harness
HARNESS = dict(backbone_args={"width": 8}, batch_size=32, seed=0, linear_epochs=20, finetune_epochs=1,
               segmentation_epochs=2, progress=False)


def test_harness_on_the_device_matches_the_cpu(world, device_under_test):
    from ssl_rs.evaluation.harness import PROTOCOLS, evaluate

    cpu = evaluate("tiny_cnn", world, protocols=list(PROTOCOLS), device="cpu", **HARNESS)
    # workers: the evaluation loaders hand batches over through the ring, pinned on a GPU
    dev = evaluate("tiny_cnn", world, protocols=list(PROTOCOLS), device=str(device_under_test), num_workers=2,
                   **HARNESS)
    assert dev["precision"] == cpu["precision"] == "32-true"
    assert (dev["n_train"], dev["n_test"], dev["feature_dim"]) == (cpu["n_train"], cpu["n_test"], cpu["feature_dim"])
    one_sample = 100.0 / cpu["n_test"]  # percent
    c, d = cpu["metrics"], dev["metrics"]
    for protocol in PROTOCOLS:
        assert set(d[protocol]) == set(c[protocol]) and finite_metrics(d[protocol]), (protocol, d[protocol])

    # k-NN: the same labels but for near-ties (test_knn_on_device_features_gives_the_cpu_labels_except_ties)
    for key in ("acc_micro", "acc_macro"):
        assert d["knn"][key] == pytest.approx(c["knn"][key], abs=2 * one_sample + 1e-6), (key, c["knn"], d["knn"])
    # linear probe: trained on features that differ by ~1e-3: at most 3 test samples change their label
    for key in ("acc_micro", "acc_macro"):
        assert d["linear"][key] == pytest.approx(c["linear"][key], abs=3 * one_sample + 1e-6), (
            key, c["linear"], d["linear"])
    assert d["linear"]["train_loss"] == pytest.approx(c["linear"]["train_loss"], rel=0.02)
    # geo probes: the pair correlation is a statistic of thousands of pairs; the location probe's
    # errors (km) are means and medians over the test samples
    for key, value in c["geo"].items():
        if key.startswith("corr_spearman"):
            assert d["geo"][key] == pytest.approx(value, abs=0.02), (key, c["geo"], d["geo"])
        elif key in ("loc_median_km", "loc_mean_km"):
            assert d["geo"][key] == pytest.approx(value, rel=0.05, abs=5.0), (key, c["geo"], d["geo"])
        elif key.startswith("loc_within_"):
            assert d["geo"][key] == pytest.approx(value, abs=3 * one_sample + 1e-6), (key, c["geo"], d["geo"])
        else:  # pairs, median_pair_km: the data, not the features
            assert d["geo"][key] == pytest.approx(value, rel=1e-9), (key, c["geo"], d["geo"])
    # segmentation: a decoder trained for two epochs on the frozen maps; pixel metrics over ~10^4 pixels
    for key in ("pixel_acc", "miou", "f1_macro"):
        assert d["segmentation"][key] == pytest.approx(c["segmentation"][key], abs=2.0), (key, c["segmentation"],
                                                                                           d["segmentation"])
    assert d["segmentation"]["train_loss"] == pytest.approx(c["segmentation"]["train_loss"], rel=0.02)
    # fine-tuning: one epoch on other flips and turns (drawn from the device's generator): its mean
    # loss is mostly the initial model's, close on both; its labels are not comparable (other draws
    # on the CPU moved the accuracy by 17 points), only in range
    assert d["finetune"]["train_loss"] == pytest.approx(c["finetune"]["train_loss"], rel=0.05)
    assert all(0.0 <= d["finetune"][key] <= 100.0 for key in ("acc_micro", "acc_macro")), d["finetune"]


def test_harness_in_mixed_precision_on_the_device_runs_every_protocol(world, device_under_test):
    from ssl_rs.evaluation.harness import PROTOCOLS, evaluate

    # 16-mixed (float16 with loss scaling) exists on CUDA only
    precisions = ["bf16-mixed"] + (["16-mixed"] if device_under_test.type == "cuda" else [])
    for precision in precisions:
        res = evaluate("tiny_cnn", world, protocols=list(PROTOCOLS), device=str(device_under_test),
                       precision=precision, **{**HARNESS, "linear_epochs": 2})
        assert res["precision"] == precision
        for protocol in PROTOCOLS:
            assert finite_metrics(res["metrics"][protocol]), (precision, protocol, res["metrics"][protocol])
        for protocol in ("knn", "linear", "finetune"):
            assert 0.0 <= res["metrics"][protocol]["acc_micro"] <= 100.0
        assert 0.0 <= res["metrics"]["segmentation"]["pixel_acc"] <= 100.0


# ----------------------------------------------------------------------------- pretraining
@pytest.mark.parametrize("case, config, extra", CASES, ids=[c[0] for c in CASES])
def test_tiny_pretraining_on_the_device_has_a_finite_loss_and_its_checkpoint_evaluates(
        case, config, extra, world, tmp_path, device_under_test, monkeypatch, capsys):
    import ssl_rs.train

    recorder = StepRecorder()
    real_make_trainer = ssl_rs.train.make_trainer

    def make_trainer(*args, extra_callbacks=(), **kwargs):
        return real_make_trainer(*args, extra_callbacks=tuple(extra_callbacks) + (recorder,), **kwargs)

    monkeypatch.setattr(ssl_rs.train, "make_trainer", make_trainer)
    on_gpu = device_under_test.type == "cuda"
    workers = 2 if case == WORKERS_CASE else 0
    runs = tmp_path / "runs"
    overrides = [
        f"data.path={world}", f"output.dir={runs}", "output.name=run", "data.batch_size=32",
        f"data.num_workers={workers}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.progress_bar=false", "trainer.knn_every_n_epochs=1", "eval.schemes=null",
        f"trainer.accelerator={'gpu' if on_gpu else 'cpu'}", "trainer.devices=1",
        # on a GPU the default precision is the one under test; the CPU is told to use it
        *([] if on_gpu else ["trainer.precision=bf16-mixed"]),
        *method_overrides(case, config), *extra,
    ]
    code = main(["pretrain", "-c", config, *overrides])
    assert code == 0, capsys.readouterr().err[-2000:]

    assert recorder.precision == "bf16-mixed"
    assert recorder.module_devices == recorder.batch_devices == {device_under_test.type}
    assert len(recorder.losses) == 2 and all(math.isfinite(v) for v in recorder.losses), recorder.losses
    run = runs / "run"
    result = json.loads((run / "results.json").read_text())
    assert result["steps"] == 2
    # the online k-NN ran on the device at the end of the epoch, and best.ckpt followed it
    assert result["best"]["checkpoint"] and math.isfinite(result["best"]["score"]), result["best"]
    (final,) = result["eval"].values()
    assert finite_metrics(final["metrics"]["knn"]), final

    scores = tmp_path / "knn.json"
    code = main(["eval", "knn", "--checkpoint", str(run), "--data", str(world), "--device", device_under_test.type,
                 "--precision", "bf16-mixed", "--json", str(scores)])
    assert code == 0, capsys.readouterr().err[-2000:]
    knn = json.loads(scores.read_text())["metrics"]["knn"]
    assert 0.0 <= knn["acc_micro"] <= 100.0 and 0.0 <= knn["acc_macro"] <= 100.0, knn
