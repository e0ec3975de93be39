"""ssl-rs's evaluation against the GeoRank authors' own code (tomburgert/georank@4754634, the code
behind the paper's tables): ``fixtures/eval_reference.pt`` holds inputs and what their k-NN
(``eval_base.KNNClassifier.knn_predict``), their metrics (``base.BaseModel.init_metrics`` /
``apply_metric``, torchmetrics 1.6.2) and their learning-rate schedule
(``utils.LinearWarmupCosineAnnealingLR``) make of them; ``fixtures/make_eval_reference.py``
regenerates it from a checkout of their repository. Their metrics are fractions, ours percent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_rs.errors import ConfigError
from ssl_rs.evaluation.finetune import multi_label_f1
from ssl_rs.evaluation.harness import evaluate
from ssl_rs.evaluation.knn import knn_evaluate, knn_scores
from ssl_rs.evaluation.linear import georank_schedule
from ssl_rs.evaluation.metrics import multi_label_metrics, single_label_metrics
from ssl_rs.evaluation.segmentation import segmentation_metrics

REFERENCE = torch.load(Path(__file__).with_name("fixtures") / "eval_reference.pt", weights_only=True)
TOL = 1e-6  # on fractions; their metric values are float32


def close(ours_percent: float, theirs) -> bool:
    return abs(ours_percent / 100.0 - float(theirs)) <= TOL


@pytest.mark.parametrize("setting", ["k200_t0.1", "k10_t0.9"])
def test_knn_single_label_votes_and_accuracies(setting):
    ref = REFERENCE["knn_single"]
    k, t = int(setting[1:].split("_")[0]), float(setting.split("_t")[1])
    args = (ref["bank"], ref["bank_labels"], ref["queries"])
    theirs = ref[setting]["scores"]
    summed = knn_scores(*args, k=k, temperature=t, num_classes=10, votes="sum", bf16_prefilter=False)
    torch.testing.assert_close(summed, theirs, rtol=1e-12, atol=0)
    # the default (normalised) votes pick the same classes
    mean = knn_scores(*args, k=k, temperature=t, num_classes=10, bf16_prefilter=False)
    assert torch.equal(mean.argmax(dim=1), theirs.argmax(dim=1))
    for votes in ("mean", "sum"):
        got = knn_evaluate(*args, ref["query_labels"], k=k, temperature=t, num_classes=10, votes=votes,
                           bf16_prefilter=False)
        assert close(got["acc_micro"], ref[setting]["accmic"]) and close(got["acc_macro"], ref[setting]["accmac"])


def test_knn_multi_label_average_precision_needs_summed_votes():
    """Their APmic/APmac rank the raw vote sums; dividing each query's votes by its total weight
    (ssl-rs's default) reorders the queries and changes the average precision."""
    ref = REFERENCE["knn_multi"]
    theirs = ref["k10_t0.9"]
    args = (ref["bank"], ref["bank_labels"].double(), ref["queries"])
    summed = knn_scores(*args, k=10, temperature=0.9, votes="sum", bf16_prefilter=False)
    torch.testing.assert_close(summed, theirs["scores"], rtol=1e-12, atol=0)
    labels = ref["query_labels"].double()
    assert labels[:, 18].sum() == 0  # a class without positives among the queries
    got = knn_evaluate(*args, labels, k=10, temperature=0.9, votes="sum", bf16_prefilter=False)
    assert close(got["ap_micro"], theirs["APmic"])
    # torchmetrics counts the class without positives as AP 0 in the macro average
    assert close(multi_label_metrics(summed, labels, absent="zero")["ap_macro"], theirs["APmac"])
    assert close(got["ap_macro"] * 18 / 19, theirs["APmac"])
    mean = knn_evaluate(*args, labels, k=10, temperature=0.9, bf16_prefilter=False)
    assert abs(mean["ap_micro"] / 100 - float(theirs["APmic"])) > 1e-3


def test_single_label_accuracies():
    ref = REFERENCE["classification"]
    got = single_label_metrics(ref["single_logits"], ref["single_labels"], num_classes=10)
    assert close(got["acc_micro"], ref["accmic"]) and close(got["acc_macro"], ref["accmac"])
    # a class predicted but never a target: torchmetrics' macro recall counts it as 0
    absent = single_label_metrics(ref["single_logits"], ref["absent_labels"], num_classes=10, absent="zero")
    assert close(absent["acc_micro"], ref["absent_accmic"]) and close(absent["acc_macro"], ref["absent_accmac"])
    skipped = single_label_metrics(ref["single_logits"], ref["absent_labels"], num_classes=10)
    assert skipped["acc_macro"] > absent["acc_macro"] + 1.0


def test_multi_label_average_precision_and_f1():
    """Linear probe and fine-tuning: their metrics take sigmoid(logits) (base.py:111), ours the
    logits; the ranking is the same, and F1 thresholds the probability at 0.5."""
    ref = REFERENCE["classification"]
    logits, labels = ref["multi_logits"], ref["multi_labels"]
    for absent in ("skip", "zero"):  # every class has positives here: the two agree
        got = multi_label_metrics(logits, labels, absent=absent)
        assert close(got["ap_micro"], ref["APmic"]) and close(got["ap_macro"], ref["APmac"])
    f1 = multi_label_f1(logits, labels)
    assert close(f1["f1_micro"], ref["f1mic"]) and close(f1["f1_macro"], ref["f1mac"])


@pytest.mark.parametrize("case", ["eurosat", "ben", "tiny"])
def test_georank_schedule_matches_their_scheduler(case):
    ref = REFERENCE["schedule"][case]
    factor = georank_schedule(ref["epochs"], ref["n_train"], ref["batch_size"])
    ours = torch.tensor([1e-3 * factor(int(step)) for step in ref["steps"]], dtype=torch.float64)
    within = ref["steps"] <= ref["max_intervals"]
    torch.testing.assert_close(ours[within], ref["lr"][within], rtol=1e-12, atol=1e-18)
    # past their step count (the partial last batches) theirs creeps back up; ours stays at lr / 10
    assert bool(((ours - ref["lr"])[~within].abs() < 1e-6).all())


def test_pixel_accuracies_as_they_log_them():
    ref = REFERENCE["segmentation"]
    preds, masks = ref["preds"], ref["masks"]
    assert close(segmentation_metrics(preds, masks, 4)["pixel_acc"], ref["PAmic_wB"])
    assert close(segmentation_metrics(preds, masks, 4, ignore_index=0)["pixel_acc"], ref["PAmic"])
    # their logged IoU reads class-index masks as one-hot (torchmetrics >= 1.6): not a mean IoU
    assert abs(float(ref["IoU"]) - float(ref["IoU_index"])) > 0.05 and float(ref["DICEmac"]) > 1.0


@pytest.mark.parametrize("option, value", [("knn_votes", "median"), ("linear_recipe", "moco")])
def test_harness_refuses_unknown_recipes_before_reading_data(option, value, tmp_path):
    with pytest.raises(ConfigError, match=f"^{option}: unknown"):
        evaluate("resnet18", tmp_path / "missing.h5", protocols=["knn", "linear"], **{option: value})
