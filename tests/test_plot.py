"""The training-curve PNG: a real PNG of the asked size, panels for what the log holds, curves
where the data puts them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imread

from stages.model.plot import training_figure, write_training_png

TRAIN = np.array([31, 119, 180]) / 255  # matplotlib's first colour (C0): the train loss


def decode(path: Path) -> np.ndarray:
    """RGB floats in [0, 1], shape (height, width, 3)."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)[..., :3]


def near(image: np.ndarray, color: np.ndarray) -> np.ndarray:
    """(y, x) of the pixels within a small distance of `color`."""
    return np.argwhere(np.abs(image - color).max(axis=-1) < 0.02)


def legend(ax) -> list[str]:  # type: ignore[no-untyped-def]
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_a_falling_loss_is_drawn_high_on_the_left(tmp_path: Path) -> None:
    records = [{"step": s, "loss": 3.0 - s / 50} for s in range(100, 0, -1)]  # unsorted
    path = tmp_path / "loss.png"
    assert write_training_png(records, path, width=600)
    image = decode(path)
    assert image.shape == (300, 600, 3)
    assert image.std() > 0.05  # not blank
    ys, xs = near(image, TRAIN).T
    assert len(xs) > 100
    left, right = ys[xs < xs.min() + 100], ys[xs > xs.max() - 100]
    assert left.mean() < right.mean()  # higher on screen = smaller row index
    assert not path.with_suffix(".png.tmp").exists()


def test_loss_panel_has_train_eval_and_the_learning_rate() -> None:
    records = [
        {"step": 1, "loss": 2.0, "learning_rate": 1e-3},
        {"step": 2, "loss": 1.5, "learning_rate": 5e-4},
        {"step": 2, "eval_loss": 1.7},
    ]
    fig = training_figure(records)
    (ax,) = fig.axes[:1]
    assert ax.get_title() == "loss"
    assert legend(ax) == ["train loss", "eval loss", "learning rate"]
    twin = fig.axes[1]  # the learning rate's own y axis
    assert list(twin.lines[0].get_ydata()) == [1e-3, 5e-4]
    assert list(ax.lines[1].get_xdata()) == [2.0]


def test_ppo_log_gets_a_reward_panel_with_kl() -> None:
    records = [
        {"step": 0, "eval_reward_mean": 0.1},
        {"step": 1, "reward_mean": 0.2, "kl": 0.0, "policy_loss": 0.5, "value_loss": 1.0},
        {"step": 2, "reward_mean": 0.4, "kl": 0.05, "policy_loss": 0.4, "value_loss": 0.8},
    ]
    fig = training_figure(records)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["loss", "reward"]
    assert legend(panels[0]) == ["policy loss", "value loss"]
    assert legend(panels[1]) == ["reward", "eval reward", "KL"]


def test_trl_reward_keys_are_the_same_curves() -> None:
    records = [{"step": s, "loss": 0.1, "reward": s / 10, "kl": 0.01 * s} for s in (1, 2, 3)]
    fig = training_figure(records)
    reward = [ax for ax in fig.axes if ax.get_title() == "reward"][0]
    assert legend(reward) == ["reward", "KL"]
    assert list(reward.lines[0].get_ydata()) == [0.1, 0.2, 0.3]


def test_two_panels_stack_into_a_taller_image(tmp_path: Path) -> None:
    records = [{"step": 1, "loss": 1.0, "reward": 0.5}, {"step": 2, "loss": 0.9, "reward": 0.7}]
    path = tmp_path / "curves.png"
    assert write_training_png(records, path, width=500)
    assert decode(path).shape == (600, 500, 3)


def test_nothing_to_plot_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "loss.png"
    records = [{"step": 1, "learning_rate": 0.1}, {"step": 2, "loss": float("nan")}]
    assert not write_training_png(records, path)
    assert not path.exists()


def test_a_single_point_and_a_flat_loss_still_plot(tmp_path: Path) -> None:
    for records in ([{"step": 5, "loss": 1.0}], [{"step": s, "loss": 1.0} for s in range(5)]):
        path = tmp_path / "loss.png"
        assert write_training_png(records, path)
        assert len(near(decode(path), TRAIN)) > 10
