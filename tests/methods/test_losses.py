"""Each method's ssl_loss against a hand-computed reference, and stop-gradients."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from ssl_rs.backbones import create_backbone
from ssl_rs.methods import momentum_schedule, warmup_cosine
from ssl_rs.methods.byol import BYOL
from ssl_rs.methods.dino import DINO
from ssl_rs.methods.mocov2 import MoCoV2
from ssl_rs.methods.simclr import SimCLR
from ssl_rs.methods.simsiam import SimSiam

B, C, S = 6, 4, 16


def views(n=2, size=S, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, C, size, size, generator=g) for _ in range(n)]


def backbone():
    torch.manual_seed(0)
    return create_backbone("tiny_cnn", in_chans=C, width=8)


def test_simclr_is_nt_xent():
    m = SimCLR(backbone(), proj_hidden_dim=32, proj_output_dim=16, temperature=0.2).eval()
    v = views()
    loss, z, _ = m.ssl_loss(v, {})
    with torch.no_grad():
        z0, z1 = (F.normalize(m.projector(m.backbone(x)), dim=1) for x in v)
    zz = torch.cat([z0, z1])
    logits = zz @ zz.T / 0.2
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(B) + B, torch.arange(B)])
    expected = F.cross_entropy(logits, targets)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(z, m.projector(m.backbone(v[0])))


def _infonce(qi, ki, queue, temperature=0.2):
    logits = torch.cat([(qi * ki).sum(1, keepdim=True), qi @ queue.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(qi), dtype=torch.long))


@pytest.mark.parametrize("symmetric", [True, False])
def test_mocov2_scores_against_the_queue_before_the_step(symmetric):
    """No negative of either direction is a key computed in the same step (the bug: the second
    direction saw this step's keys of view 2, a near-copy of its own positive), the loss equals a
    hand computation from the pre-step queue, and the keys enter the queue afterwards."""
    m = MoCoV2(backbone(), proj_hidden_dim=32, proj_output_dim=16, temperature=0.2, queue_size=24,
               symmetric=symmetric).train()
    queue_before = m.queue.clone()  # (n_queues, K, D), unit rows
    v = views()
    loss, z, _ = m.ssl_loss(v, {})
    with torch.no_grad():
        q = [F.normalize(m.projector(m.backbone(x)), dim=1) for x in v]
        k = [F.normalize(m.momentum_projector(m.momentum_backbone(x)), dim=1) for x in v]
    step_keys = torch.cat(k)
    assert (queue_before.reshape(-1, 16) @ step_keys.T).max() < 0.999  # no step key among the negatives
    if symmetric:
        expected = 0.5 * (_infonce(q[0], k[1], queue_before[1]) + _infonce(q[1], k[0], queue_before[0]))
        enqueued = torch.stack(k)
    else:
        expected = _infonce(q[0], k[1], queue_before[0])
        enqueued = k[1][None]
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(m.queue[:, :B], enqueued, atol=1e-6)  # enqueued after scoring
    assert torch.equal(m.queue[:, B:], queue_before[:, B:]) and int(m.queue_ptr) == B
    assert torch.allclose(z, m.projector(m.backbone(v[0])))


def test_mocov2_queue_wraps_around_and_resumes_from_the_state_dict():
    m = MoCoV2(backbone(), proj_hidden_dim=32, proj_output_dim=16, queue_size=10, symmetric=False).train()
    for seed in range(2):  # 2 x 6 keys into 10 slots: the pointer wraps to 2
        m.ssl_loss(views(seed=seed), {})
    assert int(m.queue_ptr) == 2
    restored = MoCoV2(backbone(), proj_hidden_dim=32, proj_output_dim=16, queue_size=10, symmetric=False)
    restored.load_state_dict(m.state_dict())
    assert torch.equal(restored.queue, m.queue) and int(restored.queue_ptr) == 2


def test_momentum_targets_start_equal_and_frozen():
    m = MoCoV2(backbone(), proj_hidden_dim=32, proj_output_dim=16, queue_size=20)
    for online, target in m.momentum_pairs():
        for po, pt in zip(online.parameters(), target.parameters()):
            assert torch.equal(po, pt) and not pt.requires_grad
    names = [n for g in m.parameter_groups() for p in g["params"] for n, q in m.named_parameters() if q is p]
    assert names and not any(n.startswith("momentum_") for n in names)


def _neg_cos(p, t):
    return -F.cosine_similarity(p, t, dim=1).mean()


def test_byol_loss_and_no_gradient_to_target():
    m = BYOL(backbone(), proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32)
    v = views()
    loss, _, _ = m.ssl_loss(v, {})
    z = [m.projector(m.backbone(x)) for x in v]
    p = [m.predictor(zi) for zi in z]
    with torch.no_grad():
        t = [m.momentum_projector(m.momentum_backbone(x)) for x in v]
    expected = 0.5 * (_neg_cos(p[0], t[1]) + _neg_cos(p[1], t[0]))
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert all(q.grad is None for q in m.momentum_backbone.parameters())
    assert all(q.grad is None for q in m.momentum_projector.parameters())
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in m.backbone.parameters())


def test_simsiam_stop_gradient_is_real():
    m = SimSiam(backbone(), proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=8).train()
    v = views()

    def grads(detach: bool):
        m.zero_grad()
        z = [m.projector(m.backbone(x)) for x in v]
        p = [m.predictor(zi) for zi in z]
        tgt = [zi.detach() if detach else zi for zi in z]
        (0.5 * (_neg_cos(p[0], tgt[1]) + _neg_cos(p[1], tgt[0]))).backward()
        return [q.grad.clone() for q in m.backbone.parameters()]

    m.zero_grad()
    loss, _, _ = m.ssl_loss(v, {})
    loss.backward()
    ours = [q.grad.clone() for q in m.backbone.parameters()]
    with_stop, without_stop = grads(True), grads(False)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, with_stop))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, without_stop))


def test_dino_loss_matches_hand_computation():
    m = DINO(backbone(), hidden_dim=32, bottleneck_dim=8, output_dim=20, teacher_temp=0.04,
             warmup_teacher_temp=0.04, student_temp=0.1, geo_embedding="bottleneck").eval()
    v = views(2) + views(2, size=8, seed=1)  # 2 global + 2 local crops
    loss, z, _ = m.ssl_loss(v, {})
    with torch.no_grad():
        student = [m.head(m.backbone(x)) for x in v]
        teacher = [m.momentum_head(m.momentum_backbone(x)) for x in v[:2]]
    total, terms = 0.0, 0
    for ti, t in enumerate(teacher):
        pt = F.softmax(t / 0.04, dim=-1)  # centre starts at zero
        for si, s in enumerate(student):
            if si == ti:
                continue
            total = total + (-(pt * F.log_softmax(s / 0.1, dim=-1)).sum(-1)).mean()
            terms += 1
    assert torch.allclose(loss, total / terms, atol=1e-5)
    assert z.shape == (B, 8) and torch.allclose(z.norm(dim=1), torch.ones(B), atol=1e-5)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 10) == 0.0  # from 0, as BYOL, SimCLR and MAE warm up
    assert warmup_cosine(5, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, floor=0.1) == pytest.approx(0.1)


def test_tau_schedule_is_cosine_over_the_whole_run():
    assert momentum_schedule(0, 100, 0.9) == pytest.approx(0.9)
    assert momentum_schedule(50, 100, 0.9) == pytest.approx(0.95)
    assert momentum_schedule(100, 100, 0.9) == pytest.approx(1.0)
    assert momentum_schedule(25, 100, 0.9, 0.99) == pytest.approx(0.99 - 0.09 * (1 + 2 ** -0.5) / 2)


def test_geo_embedding_choices_reach_the_regularizer_input():
    """BYOL's default is the GeoRank authors' choice (the prediction), DINO's the teacher and student
    prototype logits of global view 1 (their losses averaged by the base class)."""
    v = views()
    m = BYOL(backbone(), proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32)
    _, z, _ = m.ssl_loss(v, {})
    assert torch.allclose(z, m.predictor(m.projector(m.backbone(v[0]))), atol=1e-6)
    m = BYOL(backbone(), proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32, geo_embedding="projection")
    _, z, _ = m.ssl_loss(v, {})
    assert torch.allclose(z, m.projector(m.backbone(v[0])), atol=1e-6)
    m = DINO(backbone(), hidden_dim=32, bottleneck_dim=8, output_dim=20).eval()
    _, z, _ = m.ssl_loss(v + views(2, size=8, seed=1), {})
    with torch.no_grad():
        teacher = m.momentum_head(m.momentum_backbone(v[0]))
        student = m.head(m.backbone(v[0]))
    assert isinstance(z, tuple) and m.embed_dim == 20
    assert torch.allclose(z[0], teacher, atol=1e-5) and torch.allclose(z[1], student, atol=1e-5)
    assert z[1].requires_grad and not z[0].requires_grad
    with pytest.raises(Exception, match="geo.embedding"):
        DINO(backbone(), hidden_dim=32, bottleneck_dim=8, output_dim=20, geo_embedding="prediction")
