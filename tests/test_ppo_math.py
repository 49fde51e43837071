"""PPO math against values computed by hand (written out below), plus the masking contract:
what sits at a masked position never changes a result."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.testing import assert_close

from stages.rl.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    entropy_from_logits,
    gae,
    group_advantages,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
    normalize_rewards,
    policy_loss,
    reinforce_pp,
    token_rewards,
    value_loss,
)

NAN = float("nan")


def close(actual: torch.Tensor | float, expected: object) -> None:
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    assert_close(torch.as_tensor(actual, dtype=torch.float64), expected_t, atol=1e-6, rtol=0)


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# Two rows of different lengths: row 0 has 3 real tokens, row 1 has 2 and one pad.
MASK = t([[1, 1, 1], [1, 1, 0]])
REWARDS = t([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]])
VALUES = t([[0.5, 1.0, 1.5], [2.0, 1.0, 0.0]])


def test_masked_mean_and_var_ignore_masked_positions_even_nan() -> None:
    x = t([[1.0, 3.0, NAN], [5.0, NAN, NAN]])
    mask = t([[1, 1, 0], [1, 0, 0]])
    close(masked_mean(x, mask), 3.0)  # (1 + 3 + 5) / 3
    close(masked_mean(x, mask, dim=1), [2.0, 5.0])
    close(masked_var(x, mask), 4.0)  # ((-2)^2 + 0 + 2^2) / (3 - 1)
    close(masked_var(x, mask, unbiased=False), 8.0 / 3.0)


def test_masked_whiten_gives_zero_mean_unit_variance_on_real_tokens_and_zero_on_pads() -> None:
    x = t([[1.0, 3.0, NAN], [5.0, NAN, NAN]])
    mask = t([[1, 1, 0], [1, 0, 0]])
    close(masked_whiten(x, mask), [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # (x - 3) / sqrt(4)
    close(masked_whiten(x, mask, shift_mean=False), [[2.0, 3.0, 0.0], [4.0, 0.0, 0.0]])


def test_gae_on_two_rows_of_different_lengths_matches_hand_values() -> None:
    # gamma = 0.9, lam = 0.8, so gamma * lam = 0.72; V = 0 after the last real token.
    # row 0: d2 = 2 - 1.5 = 0.5;            A2 = 0.5
    #        d1 = 0 + 0.9*1.5 - 1.0 = 0.35;  A1 = 0.35 + 0.72*0.5 = 0.71
    #        d0 = 1 + 0.9*1.0 - 0.5 = 1.4;   A0 = 1.4 + 0.72*0.71 = 1.9112
    # row 1: d1 = -1 - 1.0 = -2;             A1 = -2
    #        d0 = 0.5 + 0.9*1.0 - 2.0 = -0.6; A0 = -0.6 + 0.72*(-2) = -2.04
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=0.9, lam=0.8)
    close(adv, [[1.9112, 0.71, 0.5], [-2.04, -2.0, 0.0]])
    close(ret, [[2.4112, 1.71, 2.0], [-0.04, -1.0, 0.0]])  # A + V, 0 on the pad


def test_gae_ignores_rewards_and_values_at_masked_positions() -> None:
    expected = gae(REWARDS, VALUES, MASK, gamma=0.9, lam=0.8)
    for junk in (100.0, -7.0, NAN):
        rewards, values = REWARDS.clone(), VALUES.clone()
        rewards[1, 2], values[1, 2] = junk, junk
        adv, ret = gae(rewards, values, MASK, gamma=0.9, lam=0.8)
        close(adv, expected[0])
        close(ret, expected[1])


def test_gae_with_gamma_one_lam_one_is_returns_to_go_minus_values() -> None:
    # returns-to-go: row 0 [1+0+2, 0+2, 2] = [3, 2, 2]; row 1 [0.5-1, -1] = [-0.5, -1]
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    close(adv, [[3 - 0.5, 2 - 1.0, 2 - 1.5], [-0.5 - 2.0, -1 - 1.0, 0.0]])
    close(ret, [[3.0, 2.0, 2.0], [-0.5, -1.0, 0.0]])


def test_reinforce_pp_is_discounted_return_to_go_per_row() -> None:
    # gamma = 0.5. row 0: G2 = 2, G1 = 0 + 0.5*2 = 1, G0 = 1 + 0.5*1 = 1.5
    #              row 1: G1 = -1, G0 = 3 + 0.5*(-1) = 2.5, pad 0 (its reward 9 is ignored)
    rewards = t([[1.0, 0.0, 2.0], [3.0, -1.0, 9.0]])
    close(reinforce_pp(rewards, MASK, gamma=0.5), [[1.5, 1.0, 2.0], [2.5, -1.0, 0.0]])


def test_group_advantages_normalise_within_each_group_and_broadcast_over_real_tokens() -> None:
    # group 1: [1, 2, 6], mean 3, unbiased std sqrt((4 + 1 + 9) / 2) = sqrt(7)
    # group 2: [4, 4, 4], std 0 -> all 0 (eps keeps it finite)
    scores = t([1.0, 2.0, 6.0, 4.0, 4.0, 4.0])
    mask = t([[1, 1], [1, 0], [0, 0], [1, 1], [1, 0], [1, 1]])
    s = math.sqrt(7) + 1e-6
    expected = [[-2 / s, -2 / s], [-1 / s, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    close(group_advantages(scores, 3, mask), expected)


def test_group_advantages_reject_a_group_size_that_does_not_divide_the_batch() -> None:
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(t([1.0, 2.0, 3.0]), 2, torch.ones(3, 1))


def test_policy_loss_clips_on_hand_examples_and_counts_clip_frac() -> None:
    # clip_eps 0.2; per token max(-A*r, -A*clip(r, 0.8, 1.2)):
    #   A=+1 r=1.1 inside        -> max(-1.1, -1.1) = -1.1  not clipped
    #   A=+1 r=1.5 above         -> max(-1.5, -1.2) = -1.2  clipped
    #   A=-1 r=0.5 below         -> max( 0.5,  0.8) =  0.8  clipped
    #   A=-1 r=1.5 above, A<0    -> max( 1.5,  1.2) =  1.5  not clipped (pessimistic bound)
    #   A=+2 r=0.5 below, A>0    -> max(-1.0, -1.6) = -1.0  not clipped
    #   pad (NaN everywhere)     -> ignored
    ratios = [1.1, 1.5, 0.5, 1.5, 0.5]
    logp = t([[math.log(r) for r in ratios] + [NAN]])
    old_logp = t([[0.0] * 5 + [NAN]])
    adv = t([[1.0, 1.0, -1.0, -1.0, 2.0, NAN]])
    mask = t([[1, 1, 1, 1, 1, 0]])
    loss, stats = policy_loss(logp, old_logp, adv, mask, clip_eps=0.2)
    close(loss, (-1.1 - 1.2 + 0.8 + 1.5 - 1.0) / 5)
    close(stats["clip_frac"], 2 / 5)
    close(stats["ratio_mean"], sum(ratios) / 5)
    close(stats["approx_kl"], sum(0.5 * math.log(r) ** 2 for r in ratios) / 5)


def test_policy_loss_dual_clip_caps_negative_advantage_loss_at_c_times_minus_a() -> None:
    # clip_eps 0.2, c = 3:
    #   A=-1 r=5 -> max(5, 1.2) = 5, capped at -3*A = 3
    #   A=-1 r=2 -> max(2, 1.2) = 2, under the cap of 3
    #   A=+1 r=5 -> max(-5, -1.2) = -1.2 (no cap for A > 0), clipped
    logp = t([[math.log(5.0), math.log(2.0), math.log(5.0)]])
    old_logp = torch.zeros_like(logp)
    adv = t([[-1.0, -1.0, 1.0]])
    mask = torch.ones_like(logp)
    plain, _ = policy_loss(logp, old_logp, adv, mask, clip_eps=0.2)
    close(plain, (5 + 2 - 1.2) / 3)
    loss, stats = policy_loss(logp, old_logp, adv, mask, clip_eps=0.2, dual_clip=3.0)
    close(loss, (3 + 2 - 1.2) / 3)
    close(stats["clip_frac"], 1 / 3)
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(logp, old_logp, adv, mask, clip_eps=0.2, dual_clip=1.0)


def test_policy_loss_on_first_minibatch_has_ratio_one_and_zero_clip_frac_and_kl() -> None:
    torch.manual_seed(0)
    logp = -torch.rand(3, 4, dtype=torch.float64) * 5
    adv = t([[1.0, -2.0, 0.5, 9.0], [3.0, 1.0, 9.0, 9.0], [-1.0, 9.0, 9.0, 9.0]])
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    loss, stats = policy_loss(logp, logp.clone(), adv, mask, clip_eps=0.2)
    assert stats["ratio_mean"] == 1.0
    assert stats["clip_frac"] == 0.0
    assert stats["approx_kl"] == 0.0
    close(loss, -(1.0 - 2.0 + 0.5 + 3.0 + 1.0 - 1.0) / 6)  # -mean(A) over the 6 real tokens


def test_policy_loss_gradient_is_finite_with_nan_at_masked_positions() -> None:
    logp = t([[-1.0, NAN]]).requires_grad_()
    loss, _ = policy_loss(logp, t([[-1.1, NAN]]), t([[1.0, NAN]]), t([[1, 0]]), clip_eps=0.2)
    loss.backward()
    close(logp.grad, [[-math.exp(0.1), 0.0]])  # d(-A * r)/dlogp = -r, r = e^0.1 < 1.2


def test_value_loss_with_clipping_matches_hand_values() -> None:
    # clip_eps 0.2, per token max((v - R)^2, (clip(v, old - 0.2, old + 0.2) - R)^2):
    #   old 1, v 1.1, R 2   -> max(0.81, 0.81) = 0.81   not clipped (v inside the range)
    #   old 1, v 1.5, R 2   -> max(0.25, 0.64) = 0.64   clipped
    #   old 1, v 1.5, R 0   -> max(2.25, 1.44) = 2.25   not clipped
    #   old 0, v -1,  R -2  -> max(1.00, 3.24) = 3.24   clipped
    #   pad                 -> ignored
    values = t([[1.1, 1.5, 1.5, -1.0, NAN]])
    old_values = t([[1.0, 1.0, 1.0, 0.0, NAN]])
    returns = t([[2.0, 2.0, 0.0, -2.0, NAN]])
    mask = t([[1, 1, 1, 1, 0]])
    loss, stats = value_loss(values, old_values, returns, mask, clip_eps=0.2)
    close(loss, 0.5 * (0.81 + 0.64 + 2.25 + 3.24) / 4)
    close(stats["value_clip_frac"], 2 / 4)


def test_kl_estimators_on_hand_values() -> None:
    # logp - ref = [0.5, -1.0]; r = exp(ref - logp) = [e^-0.5, e^1]
    logp, ref = t([-1.0, -2.0]), t([-1.5, -1.0])
    close(kl_penalty(logp, ref, "k1"), [0.5, -1.0])
    close(kl_penalty(logp, ref, "k2"), [0.125, 0.5])  # 0.5 * d^2
    # (r - 1) - log r: 0.6065306597 - 1 + 0.5 and 2.7182818285 - 1 - 1
    close(kl_penalty(logp, ref, "k3"), [0.1065306597, 0.7182818285])


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimator_is_zero_when_logp_equals_ref_logp(estimator: str) -> None:
    logp = t([[-0.1, -2.5, -7.0]])
    close(kl_penalty(logp, logp.clone(), estimator), [[0.0, 0.0, 0.0]])


def test_kl_penalty_rejects_an_unknown_estimator() -> None:
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(t([0.0]), t([0.0]), "k4")


def test_token_rewards_place_the_score_at_the_last_real_token() -> None:
    # kl_coef 0.5; rows of 3, 1 and 0 real tokens; a NaN KL on a pad is ignored
    scores = t([2.0, -1.0, 5.0])
    kl = t([[0.1, 0.2, 0.3], [0.4, NAN, 1.0], [0.7, 0.8, 0.9]])
    mask = t([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    expected = [[-0.05, -0.1, -0.15 + 2.0], [-0.2 - 1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    close(token_rewards(scores, kl, mask, kl_coef=0.5), expected)


def test_entropy_from_logits_is_log_n_for_uniform_and_zero_for_a_near_one_hot() -> None:
    logits = t([[[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0]]])
    close(entropy_from_logits(logits), [[math.log(4), 0.0]])
    # p = [0.5, 0.25, 0.25]: -(0.5 ln 0.5 + 2 * 0.25 ln 0.25) = 1.5 ln 2
    close(entropy_from_logits(t([math.log(2), 0.0, 0.0]) + 3.0), 1.5 * math.log(2))


def test_adaptive_kl_controller_after_one_update_matches_the_formula() -> None:
    # target 6, horizon 10000, n_steps 256:
    #   KL 6.6 -> error 6.6/6 - 1 = 0.1       -> 0.2 * (1 + 0.1 * 256 / 10000) = 0.200512
    #   KL 7.5 -> error 0.25, clipped to 0.2  -> 0.2 * (1 + 0.2 * 256 / 10000) = 0.201024
    #   KL 3.0 -> error -0.5, clipped to -0.2 -> 0.2 * (1 - 0.2 * 256 / 10000) = 0.198976
    for kl, expected in ((6.6, 0.200512), (7.5, 0.201024), (3.0, 0.198976)):
        ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
        ctl.update(kl, n_steps=256)
        close(ctl.value, expected)


def test_kl_controllers_state_dict_round_trips_through_json() -> None:
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(7.5, n_steps=256)
    restored = AdaptiveKLController(init_kl_coef=1.0, target=1.0, horizon=1)
    restored.load_state_dict(json.loads(json.dumps(ctl.state_dict())))
    assert restored.state_dict() == ctl.state_dict()
    ctl.update(3.0, 64)
    restored.update(3.0, 64)
    assert restored.value == ctl.value

    fixed = FixedKLController(0.05)
    fixed.update(100.0, 256)
    assert fixed.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(json.loads(json.dumps(fixed.state_dict())))
    assert other.value == 0.05


def test_running_moments_equal_mean_and_std_of_the_concatenation() -> None:
    moments = RunningMoments()
    for batch in ([1.0, 2.0], [3.0], [4.0, 5.0, 6.0]):
        moments.update(t(batch))
    # 1..6: mean 3.5, unbiased variance (6.25 + 2.25 + 0.25) * 2 / 5 = 3.5
    assert moments.count == 6
    close(moments.mean, 3.5)
    close(moments.std, math.sqrt(3.5))

    torch.manual_seed(0)
    batches = [torch.randn(n, dtype=torch.float64) * 3 + 10 for n in (7, 1, 30, 4)]
    moments = RunningMoments()
    for batch in batches:
        moments.update(batch)
    everything = torch.cat(batches)
    close(moments.mean, everything.mean())
    close(moments.std, everything.std())


def test_running_moments_state_dict_round_trips_through_json() -> None:
    moments = RunningMoments()
    moments.update(t([1.0, 2.0, 4.0]))
    restored = RunningMoments()
    restored.load_state_dict(json.loads(json.dumps(moments.state_dict())))
    for m in (moments, restored):
        m.update(t([8.0, -3.0]))
    assert restored.state_dict() == moments.state_dict()
    assert (restored.mean, restored.std, restored.count) == (moments.mean, moments.std, 5)


def test_normalize_rewards_uses_running_moments_and_clips() -> None:
    # [0, 0, 0, 10]: mean 2.5, unbiased var (3 * 6.25 + 56.25) / 3 = 25, std 5
    # -> [-0.5, -0.5, -0.5, 1.5], clipped to 1 -> 1.0
    moments = RunningMoments()
    close(normalize_rewards(t([0.0, 0.0, 0.0, 10.0]), moments, clip=1.0), [-0.5] * 3 + [1.0])
    # then [5] alone: the moments of all five, [0, 0, 0, 10, 5]: mean 3, var (27 + 49 + 4) / 4 = 20
    close(normalize_rewards(t([5.0]), moments, clip=None), [2.0 / math.sqrt(20)])
    fresh = RunningMoments()
    close(normalize_rewards(t([0.0, 0.0, 0.0, 10.0]), fresh, clip=None), [-0.5] * 3 + [1.5])
