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


def test_mocov2_is_symmetric_infonce_with_queue():
    m = MoCoV2(backbone(), proj_hidden_dim=32, proj_output_dim=16, temperature=0.2, queue_size=20).eval()
    bank = m.criterion.memory_bank
    queue0 = bank.bank.clone()  # (queue, dim), entries already unit norm
    ptr0 = int(bank.bank_ptr)
    v = views()
    loss, z, _ = m.ssl_loss(v, {})
    with torch.no_grad():
        q = [F.normalize(m.projector(m.backbone(x)), dim=1) for x in v]
        k = [F.normalize(m.momentum_projector(m.momentum_backbone(x)), dim=1) for x in v]

    def infonce(qi, ki, queue):
        logits = torch.cat([(qi * ki).sum(1, keepdim=True), qi @ queue.T], dim=1) / 0.2
        return F.cross_entropy(logits, torch.zeros(B, dtype=torch.long))

    queue1 = queue0.clone()
    queue1[ptr0:ptr0 + B] = k[1]  # the first term enqueues the keys of view 2
    expected = 0.5 * (infonce(q[0], k[1], queue0) + infonce(q[1], k[0], queue1))
    assert torch.allclose(loss, expected, atol=1e-5)


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
             warmup_teacher_temp=0.04, student_temp=0.1).eval()
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
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, floor=0.1) == pytest.approx(0.1)


def test_tau_schedule_is_cosine_over_the_whole_run():
    assert momentum_schedule(0, 100, 0.9) == pytest.approx(0.9)
    assert momentum_schedule(50, 100, 0.9) == pytest.approx(0.95)
    assert momentum_schedule(100, 100, 0.9) == pytest.approx(1.0)
    assert momentum_schedule(25, 100, 0.9, 0.99) == pytest.approx(0.99 - 0.09 * (1 + 2 ** -0.5) / 2)
