"""The retrieval loss: pml's contrastive semantics and reducer, KoLeo, and the cross-batch memory."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import distances, losses
from torch import nn

from services.errors import ConfigError
from services.training.losses import LossConfig, RetrievalLoss, koleo_loss


def _unit(*degrees: float) -> torch.Tensor:
    """2-D unit vectors at the given angles, so that every cosine is cos(angle difference)."""
    rad = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    return torch.stack([rad.cos(), rad.sin()], dim=1).float()


def _cos(deg: float) -> float:
    return math.cos(math.radians(deg))


# Labels 0, 0, 1, 1 at 0, 30, 45 and 180 degrees. No cosine sits on a margin.
# Positive pairs: (0,1) at 30 deg, (2,3) at 135 deg. Negatives above 0.5: (0,2) at 45 deg, (1,2) at 15 deg.
EMB = _unit(0, 30, 45, 180)
LABELS = torch.tensor([0, 0, 1, 1])
HAND_POS = [1 - _cos(30), 1 - _cos(135)]
HAND_NEG_ACTIVE = [_cos(45) - 0.5, _cos(15) - 0.5]  # (0,3) at 180 and (1,3) at 150 cost nothing


def test_pml_contrastive_with_cosine_is_one_minus_s_and_hinge_at_half_averaged_over_nonzero_pairs() -> None:
    loss = losses.ContrastiveLoss(pos_margin=1, neg_margin=0.5, distance=distances.CosineSimilarity())
    expected = sum(HAND_POS) / len(HAND_POS) + sum(HAND_NEG_ACTIVE) / len(HAND_NEG_ACTIVE)
    assert loss(EMB, LABELS).item() == pytest.approx(expected, abs=1e-6)
    # A plain mean over all 4 negative pairs would halve the negative term; pml's AvgNonZero does not.
    plain_mean = sum(HAND_POS) / 2 + sum(HAND_NEG_ACTIVE) / 4
    assert abs(loss(EMB, LABELS).item() - plain_mean) > 0.1


def test_retrieval_loss_without_memory_or_koleo_equals_the_hand_value() -> None:
    crit = RetrievalLoss(LossConfig(), embedding_size=2)
    total, parts = crit(EMB, LABELS)
    expected = sum(HAND_POS) / 2 + sum(HAND_NEG_ACTIVE) / 2
    assert total.item() == pytest.approx(expected, abs=1e-6)
    assert parts["contrastive"] == pytest.approx(expected, abs=1e-6)
    assert parts["total"] == pytest.approx(expected, abs=1e-6)
    assert parts["koleo"] == pytest.approx(koleo_loss(EMB).item(), abs=1e-6)


@pytest.mark.parametrize(("angle", "cost"), [(80.0, 0.0), (66.0, 0.0), (30.0, _cos(30) - 0.5), (10.0, _cos(10) - 0.5)])
def test_negative_pairs_cost_nothing_below_the_margin_and_s_minus_half_above(angle: float, cost: float) -> None:
    emb = _unit(0, angle).requires_grad_(True)
    crit = RetrievalLoss(LossConfig(), embedding_size=2)
    total, _ = crit(emb, torch.tensor([0, 1]))
    total.backward()
    assert total.item() == pytest.approx(cost, abs=1e-6)
    grad_norm = emb.grad.norm().item()
    assert (grad_norm > 1e-3) if cost > 0 else grad_norm == 0.0


def test_koleo_matches_a_brute_force_loop_and_excludes_self() -> None:
    emb = torch.nn.functional.normalize(torch.randn(7, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    nearest = [min((emb[i] - emb[j]).norm().item() for j in range(7) if j != i) for i in range(7)]
    brute = -sum(math.log(d + 1e-8) for d in nearest) / 7
    value = koleo_loss(emb).item()
    assert value == pytest.approx(brute, rel=1e-5)
    assert math.isfinite(value) and value < 5  # including self would give -log(1e-8) = 18.4


def test_koleo_has_a_gradient_and_moves_with_the_embeddings() -> None:
    emb = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    # The analytic gradient equals central finite differences (float64): a detached or zero gradient fails.
    assert torch.autograd.gradcheck(koleo_loss, (emb.double().requires_grad_(True),), eps=1e-6, atol=1e-5)
    emb.requires_grad_(True)
    koleo_loss(emb).backward()
    assert emb.grad.norm().item() > 1e-3
    moved = emb.detach().clone()
    moved[0] = moved[1] + 0.01
    assert koleo_loss(moved).item() != pytest.approx(koleo_loss(emb.detach()).item(), abs=1e-4)


def test_a_gradient_step_on_koleo_pushes_close_points_apart() -> None:
    gen = torch.Generator().manual_seed(2)
    centre = torch.nn.functional.normalize(torch.randn(1, 8, generator=gen), dim=1)
    cluster = torch.nn.functional.normalize(centre + 0.01 * torch.randn(10, 8, generator=gen), dim=1)

    def min_pairwise(x: torch.Tensor) -> float:
        return torch.pdist(x).min().item()

    emb = cluster.clone().requires_grad_(True)
    koleo_loss(emb).backward()
    with torch.no_grad():
        stepped = torch.nn.functional.normalize(emb - 1e-3 * emb.grad, dim=1)
    assert min_pairwise(stepped) > min_pairwise(cluster) * 1.05


def test_koleo_stays_finite_for_duplicates_and_is_zero_for_a_single_embedding() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    value = koleo_loss(emb)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all()
    assert koleo_loss(torch.ones(1, 3)).item() == 0.0


def test_koleo_weight_adds_to_the_contrastive_term() -> None:
    crit = RetrievalLoss(LossConfig(koleo_weight=0.3), embedding_size=2)
    total, parts = crit(EMB, LABELS)
    assert parts["total"] == pytest.approx(parts["contrastive"] + 0.3 * parts["koleo"], abs=1e-6)
    assert total.item() == pytest.approx(parts["total"], abs=1e-6)


def test_cross_batch_memory_supplies_positives_from_earlier_batches() -> None:
    # One image per label, as orthogonal one-hots: no positives in the batch, and no negative above 0.5.
    current = torch.eye(4)
    labels = torch.arange(4)
    plain = RetrievalLoss(LossConfig(memory_size=0), embedding_size=4)
    assert plain(current, labels)[1]["contrastive"] == 0.0

    crit = RetrievalLoss(LossConfig(memory_size=16), embedding_size=4)
    crit(current.roll(1, dims=0), labels)  # earlier batch: label i stored at one-hot e_{i-1}
    assert crit.memory_fill == 4
    emb = current.clone().requires_grad_(True)
    total, parts = crit(emb, labels)
    # Against memory, label i meets its positive at s=0 (cost 1) and label i+1's entry at s=1 (cost 0.5).
    assert parts["contrastive"] == pytest.approx(1.0 + 0.5, abs=1e-6)
    total.backward()
    assert emb.grad.norm().item() > 0
    assert crit.memory_fill == 8


def test_cross_batch_memory_survives_a_state_dict_round_trip() -> None:
    gen = torch.Generator().manual_seed(3)
    batches = [
        (
            torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=1),
            torch.randint(0, 3, (6,), generator=gen),
        )
        for _ in range(4)
    ]
    cfg = LossConfig(memory_size=10, koleo_weight=0.3)
    first = nn.ModuleDict({"loss": RetrievalLoss(cfg, embedding_size=8)})  # also inside a parent module
    for emb, labels in batches[:2]:  # 12 > 10: the queue has wrapped
        first["loss"](emb, labels)
    state = first.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    resumed = nn.ModuleDict({"loss": RetrievalLoss(cfg, embedding_size=8)})
    resumed.load_state_dict(state)
    assert resumed["loss"].memory_fill == first["loss"].memory_fill == 10
    for emb, labels in batches[2:]:
        assert resumed["loss"](emb, labels)[1] == pytest.approx(first["loss"](emb, labels)[1], abs=1e-6)

    resumed["loss"].reset_memory()
    assert resumed["loss"].memory_fill == 0


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ConfigError):
        LossConfig(kind="triplet")
    with pytest.raises(ConfigError):
        RetrievalLoss(LossConfig(kind="crossentropy"), embedding_size=4)
    with pytest.raises(ConfigError, match="larger than the cross-batch memory"):
        RetrievalLoss(LossConfig(memory_size=4), embedding_size=2)(_unit(0, 10, 20, 30, 40), torch.arange(5))
