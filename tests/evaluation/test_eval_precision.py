"""The evaluation precision (ssl_rs/evaluation/features.py): bf16-mixed really runs the forward
passes under autocast, gives features and metrics close to float32, reaches results.json, and a
bad value or 16-mixed without CUDA is a one-line error naming the option.

Tolerances (bfloat16 keeps 8 significant bits, a relative rounding step of 2**-8 ~ 0.4 %):
features within 3 % of the largest feature value and at cosine similarity >= 0.999 per sample;
k-NN and linear-probe accuracy within one test sample; segmentation mIoU within 1 point;
fine-tuning's last-epoch loss within 1 %."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ssl_rs.backbones import create_backbone
from ssl_rs.data.dataset import GeoDataset
from ssl_rs.errors import ConfigError
from ssl_rs.evaluation.features import autocast, check_precision, extract_features, grad_scaler, optimizer_step

CUDA = torch.cuda.is_available()


def tiny_cnn(seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone("tiny_cnn", in_chans=12, width=8)


def record_dtypes(module: torch.nn.Module, seen: list):
    """Note the dtype each convolution of ``module`` computes in."""
    convs = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    return [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype)) for m in convs]


@pytest.fixture(scope="module")
def masked_world(tmp_path_factory):
    from ssl_rs.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("prec") / "seg.h5", n=96, size=16, seed=2, num_classes=3,
                      progress=False, masks=True)


def loader(path, split, batch_size=32):
    from ssl_rs.augmentations import Preprocess
    from ssl_rs.data.loader import make_loader

    ds = GeoDataset(path, split=split)
    return make_loader(ds, batch_size=batch_size, shuffle=False), Preprocess(16, ds.band_mean, ds.band_std)


# ----------------------------------------------------------------------------- the autocast is real
def test_bf16_features_are_computed_in_bf16_and_stored_in_float32(tiny_world):
    batches, preprocess = loader(tiny_world, "train")
    backbone = tiny_cnn()
    seen: list = []
    hooks = record_dtypes(backbone, seen)
    exact, _ = extract_features(backbone, batches, preprocess=preprocess, progress=False)
    assert set(seen) == {torch.float32}
    seen.clear()
    mixed, _ = extract_features(backbone, batches, preprocess=preprocess, progress=False, precision="bf16-mixed")
    for h in hooks:
        h.remove()
    assert set(seen) == {torch.bfloat16}
    assert exact.dtype == mixed.dtype == torch.float32  # what k-NN and the probes are given
    assert not torch.equal(exact, mixed)
    assert (mixed - exact).abs().max() <= 0.03 * exact.abs().max()
    assert F.cosine_similarity(mixed, exact, dim=1).min() >= 0.999


def test_finetune_trains_and_scores_under_autocast(tiny_world):
    from ssl_rs.evaluation.finetune import finetune

    train, test = GeoDataset(tiny_world, split="train"), GeoDataset(tiny_world, split="test")
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        backbone = tiny_cnn()
        seen: list = []
        hooks = record_dtypes(backbone, seen)  # the deep copy that trains keeps the hooks
        results[precision] = finetune(backbone, train, test, epochs=3, lr=1e-2, batch_size=32, progress=False,
                                      precision=precision)
        for h in hooks:
            h.remove()
        assert set(seen) == {torch.float32 if precision == "32-true" else torch.bfloat16}
    exact, mixed = results["32-true"], results["bf16-mixed"]
    assert mixed["train_loss"] != exact["train_loss"]
    assert mixed["train_loss"] == pytest.approx(exact["train_loss"], rel=0.01)
    assert abs(mixed["acc_micro"] - exact["acc_micro"]) <= 100 / len(test) + 1e-9


def test_segmentation_probe_under_autocast(masked_world):
    from ssl_rs.evaluation.harness import evaluate

    results, seen = {}, {}
    for precision in ("32-true", "bf16-mixed"):
        backbone = tiny_cnn()
        seen[precision] = []
        record_dtypes(backbone, seen[precision])
        results[precision] = evaluate(backbone, masked_world, protocols=["segmentation"], batch_size=16,
                                      segmentation_epochs=3, device="cpu", progress=False, precision=precision)
    assert set(seen["32-true"]) == {torch.float32} and set(seen["bf16-mixed"]) == {torch.bfloat16}
    exact, mixed = (results[p]["metrics"]["segmentation"] for p in ("32-true", "bf16-mixed"))
    assert mixed["miou"] == pytest.approx(exact["miou"], abs=1.0)
    assert results["bf16-mixed"]["precision"] == "bf16-mixed"


def test_keeping_the_maps_in_bf16_feeds_the_decoder_what_float32_maps_would():
    """The segmentation probe caches the backbone's maps in the dtype autocast gave them: its
    decoders start with a convolution, which autocast runs on bf16 inputs anyway."""
    from ssl_rs.evaluation.segmentation import GeoRankHead, MultiLevelHead

    torch.manual_seed(0)
    maps = [torch.randn(2, 8, 4, 4).bfloat16(), torch.randn(2, 16, 4, 4).bfloat16()]
    for head in (GeoRankHead([8, 16], 3), MultiLevelHead([8, 16], 3).eval()):
        with torch.no_grad(), autocast("bf16-mixed", "cpu"):
            kept = head(maps, (8, 8))
            widened = head([m.float() for m in maps], (8, 8))
        assert torch.equal(kept, widened)


# ----------------------------------------------------------------------------- metrics and results.json
def test_frozen_protocols_agree_with_float32_and_record_the_precision(tiny_world):
    from ssl_rs.evaluation.harness import evaluate

    runs = {p: evaluate("tiny_cnn", tiny_world, protocols=["knn", "linear"], backbone_args={"width": 8},
                        batch_size=32, linear_epochs=20, device="cpu", progress=False, precision=p)
            for p in (None, "bf16")}
    assert runs[None]["precision"] == "32-true" and runs["bf16"]["precision"] == "bf16-mixed"
    one_sample = 100 / runs[None]["n_test"]
    for protocol in ("knn", "linear"):
        for metric in ("acc_micro", "acc_macro"):
            assert abs(runs["bf16"]["metrics"][protocol][metric] - runs[None]["metrics"][protocol][metric]) \
                <= one_sample + 1e-9, (protocol, metric)


def test_cli_precision_reaches_the_json(tiny_world, tmp_path, capsys):
    from ssl_rs.cli import main

    out = tmp_path / "knn.json"
    common = ["eval", "knn", "--backbone", "tiny_cnn", "--backbone-args", '{"width": 8}', "--data",
              str(tiny_world), "--device", "cpu", "--batch-size", "32", "--json", str(out)]
    assert main([*common, "--precision", "bf16-mixed"]) == 0
    assert "precision bf16-mixed" in capsys.readouterr().out
    assert json.loads(out.read_text())["precision"] == "bf16-mixed"
    assert main(common) == 0
    assert json.loads(out.read_text())["precision"] == "32-true"


def test_pretraining_results_json_records_eval_precision(tiny_world, tmp_path):
    from ssl_rs.cli import main

    assert main(["pretrain", "-c", "synthetic/mocov2", f"data.path={tiny_world}", f"output.dir={tmp_path}",
                 "data.batch_size=32", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                 "trainer.progress_bar=false", "trainer.knn_every_n_epochs=0", "backbone.args.width=8",
                 "method.args.queue_size=64", "eval.schemes=null", "eval.precision=bf16-mixed"]) == 0
    results = json.loads(next(tmp_path.glob("*/results.json")).read_text())
    (evaluation,) = results["eval"].values()
    assert evaluation["precision"] == "bf16-mixed" and results["config"]["eval"]["precision"] == "bf16-mixed"


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("value", ["fp8", "64-true", "bf16-true", "", 32.0, True])
def test_bad_values_name_the_option(value):
    with pytest.raises(ConfigError, match=r"^eval\.precision: must be one of 32-true, bf16-mixed, 16-mixed, got "):
        check_precision(value, option="eval.precision")


def test_aliases_and_default():
    assert check_precision(None) == "32-true"
    assert [check_precision(v) for v in (32, "32", "bf16", "16")] == ["32-true", "32-true", "bf16-mixed", "16-mixed"]
    assert check_precision("bf16-mixed", "cpu") == "bf16-mixed"


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp8"], "--precision: must be one of 32-true, bf16-mixed, 16-mixed, got 'fp8'"),
    (["--precision", "16-mixed", "--device", "cpu"], "--precision: 16-mixed (float16 with loss scaling) runs on "
                                                     "CUDA only, not on cpu"),
])
def test_cli_bad_precision_is_one_line(tiny_world, capsys, argv, message):
    from ssl_rs.cli import main

    rc = main(["eval", "knn", "--backbone", "tiny_cnn", "--data", str(tiny_world), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_fp16_needs_cuda_everywhere(tiny_world):
    from ssl_rs.evaluation.finetune import finetune
    from ssl_rs.evaluation.harness import evaluate

    with pytest.raises(ConfigError, match="^precision: 16-mixed .* CUDA only, not on cpu"):
        evaluate("tiny_cnn", tiny_world, backbone_args={"width": 8}, device="cpu", precision="16-mixed",
                 progress=False)
    batches, _ = loader(tiny_world, "train")
    with pytest.raises(ConfigError, match="^precision: 16-mixed"):
        extract_features(tiny_cnn(), batches, device="cpu", precision="16-mixed", progress=False)
    train = GeoDataset(tiny_world, split="train")
    with pytest.raises(ConfigError, match="^finetune_precision: 16-mixed"):
        finetune(tiny_cnn(), train, train, device="cpu", precision="16-mixed",
                 names={"precision": "finetune_precision"}, progress=False)


def test_pretraining_config_checks_eval_precision(tiny_world):
    from ssl_rs.config import load_config, validate
    from ssl_rs.evaluation.plan import check_evaluation

    base = [f"data.path={tiny_world}", "eval.schemes=null"]
    with pytest.raises(ConfigError, match="^eval.precision: must be one of"):
        validate(load_config("synthetic/mocov2", [*base, "eval.precision=half"]))
    cfg = load_config("synthetic/mocov2", [*base, "eval.precision=16-mixed"])
    validate(cfg)  # a valid value; whether this machine can run it is check_evaluation's
    if CUDA:
        assert check_evaluation(cfg) is None
    else:
        with pytest.raises(ConfigError, match="^eval.precision: 16-mixed .* CUDA only"):
            check_evaluation(cfg)


# ----------------------------------------------------------------------------- suites
def write_suite(path, tiny_world, eval_block: str):
    path.write_text(f"""name: prec
data: {{path: {tiny_world}}}
base_config: synthetic/mocov2
overrides: [trainer.max_epochs=1, backbone.args.width=8]
eval:
  protocols: [knn]
{eval_block}""")
    return path


def test_suite_precision_is_checked_and_is_part_of_the_cell_id(tiny_world, tmp_path):
    from ssl_rs.bench.runner import plan, run_suite
    from ssl_rs.bench.suite import load_suite

    with pytest.raises(ConfigError, match="eval.precision: must be one of 32-true, bf16-mixed, 16-mixed, got 'fp8'"):
        load_suite(write_suite(tmp_path / "bad.yaml", tiny_world, "  precision: fp8\n"))
    ids = {}
    for name, block in (("none", ""), ("bf16", "  precision: bf16\n"), ("bf16m", "  precision: bf16-mixed\n")):
        suite = load_suite(write_suite(tmp_path / f"{name}.yaml", tiny_world, block))
        ids[name] = [c.id for c in plan(suite, tmp_path / "out")[0]]
    assert ids["bf16"] == ids["bf16m"] != ids["none"]
    fp16 = write_suite(tmp_path / "fp16.yaml", tiny_world, "  precision: 16-mixed\n")
    assert run_suite(fp16, tmp_path / "dry", dry_run=True, stream=open("/dev/null", "w"))["total"] == 1
    if not CUDA:
        with pytest.raises(ConfigError, match=r"cell 1 .*eval.precision: 16-mixed .* CUDA only"):
            run_suite(fp16, tmp_path / "real", stream=open("/dev/null", "w"))
        assert not (tmp_path / "real").exists()


# ----------------------------------------------------------------------------- loss scaling
def test_fp16_training_gets_a_loss_scaler():
    assert grad_scaler("32-true", "cpu") is None and grad_scaler("bf16-mixed", "cpu") is None
    device = "cuda" if CUDA else "cpu"
    scaler = grad_scaler("16-mixed", device)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.get_scale() > 1
    layer = torch.nn.Linear(3, 1).to(device)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    optimizer_step(layer(torch.ones(4, 3, device=device)).sum(), optimizer, scaler)
    # each weight's gradient is 4 (four rows of ones): unscaled before the step, a plain SGD step
    assert torch.allclose(layer.weight.detach(), before - 0.4)


def test_emulated_bf16_on_a_cpu_is_warned_about_once(monkeypatch, caplog):
    from ssl_rs.evaluation import features

    monkeypatch.setattr(features, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(features, "_warned_emulated_bf16", False)
    with caplog.at_level("WARNING", logger="ssl_rs.evaluation.features"):
        check_precision("bf16-mixed", "cpu", "--precision")
        check_precision("bf16-mixed", "cpu", "--precision")
    assert [r.getMessage() for r in caplog.records] == [
        "--precision: this CPU has no bfloat16 instructions (AVX512-BF16, AMX): bf16-mixed is emulated and can be "
        "many times slower than 32-true here"]
