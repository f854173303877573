import math

import pytest
import torch

from detlib.config import get_cfg
from detlib.solver import WarmupCosineLR, WarmupMultiStepLR, build_lr_scheduler


def _lrs(scheduler, optimizer, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _optimizer(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _cfg(**solver):
    cfg = get_cfg()
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def test_multistep_with_linear_warmup_matches_the_formula():
    # Linear warmup: lr = base * (f * (1 - a) + a), a = iter / warmup_iters; then x gamma per step.
    cfg = _cfg(BASE_LR=0.02, MAX_ITER=30, STEPS=(12, 20), GAMMA=0.1, WARMUP_ITERS=5, WARMUP_FACTOR=0.001)
    optimizer = _optimizer(0.02)
    lrs = _lrs(build_lr_scheduler(cfg, optimizer), optimizer, 30)
    expected = []
    for i in range(30):
        if i < 5:
            a = i / 5
            expected.append(0.02 * (0.001 * (1 - a) + a))
        else:
            expected.append(0.02 * 0.1 ** sum(i >= s for s in (12, 20)))
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_constant_warmup_and_the_class_form_agree():
    optimizer = _optimizer()
    lrs = _lrs(
        WarmupMultiStepLR(
            optimizer, [6], max_iter=10, gamma=0.5, warmup_factor=0.1, warmup_iters=3, warmup_method="constant"
        ),
        optimizer,
        10,
    )
    assert lrs == pytest.approx([0.1] * 3 + [1.0] * 3 + [0.5] * 4)


def test_cosine_with_warmup_ends_at_base_lr_end():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupCosineLR", BASE_LR=1.0, BASE_LR_END=0.1, MAX_ITER=20, WARMUP_ITERS=0)
    optimizer = _optimizer()
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = _lrs(scheduler, optimizer, 20)
    expected = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 20)) for i in range(20)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # after the last step

    optimizer = _optimizer()
    assert _lrs(WarmupCosineLR(optimizer, max_iter=20, warmup_iters=0), optimizer, 3) == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * i / 20)) for i in range(3)]
    )


def test_a_restored_scheduler_continues_the_same_schedule():
    cfg = _cfg(BASE_LR=1.0, MAX_ITER=20, STEPS=(8,), WARMUP_ITERS=4)
    optimizer = _optimizer()
    scheduler = build_lr_scheduler(cfg, optimizer)
    full = _lrs(scheduler, optimizer, 20)

    optimizer = _optimizer()
    scheduler = build_lr_scheduler(cfg, optimizer)
    _lrs(scheduler, optimizer, 6)
    resumed_optimizer = _optimizer()
    resumed = build_lr_scheduler(cfg, resumed_optimizer)
    resumed.load_state_dict(scheduler.state_dict())
    resumed_optimizer.load_state_dict(optimizer.state_dict())  # holds the lr of the next step
    assert _lrs(resumed, resumed_optimizer, 14) == pytest.approx(full[6:])


def test_steps_beyond_max_iter_are_ignored_and_bad_names_rejected():
    optimizer = _optimizer()
    scheduler = build_lr_scheduler(_cfg(BASE_LR=1.0, MAX_ITER=10, STEPS=(5, 50), WARMUP_ITERS=0), optimizer)
    lrs = _lrs(scheduler, optimizer, 10)
    assert lrs == pytest.approx([1.0] * 5 + [0.1] * 5)
    with pytest.raises(ValueError, match="WarmupCosineLR"):
        build_lr_scheduler(_cfg(LR_SCHEDULER_NAME="Cosine"), _optimizer())
    with pytest.raises(ValueError, match="warmup method"):
        build_lr_scheduler(_cfg(WARMUP_METHOD="exp"), _optimizer())
