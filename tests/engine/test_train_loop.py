"""SimpleTrainer is loss-agnostic: it sums whatever losses a model returns and steps."""

import copy
import itertools
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from detlib.engine import AMPTrainer, ModelWithLoss, SimpleTrainer, hooks
from detlib.utils.events import JSONWriter, TensorboardXWriter, get_event_storage


def _classification_batches(num_batches=6, batch_size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {"x": torch.randn(batch_size, 5, generator=g), "label": torch.randint(0, 3, (batch_size,), generator=g)}
        for _ in range(num_batches)
    ]


class Classifier(nn.Module):
    """A non-detection model that owns its losses, the way detlib's heads do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(5, 3)
        self.logged = []

    def forward(self, batch):
        logits = self.linear(batch["x"])
        scale = logits.detach().abs().mean().item()
        self.logged.append(scale)
        get_event_storage().put_scalar("diag/logit_scale", scale, smoothing_hint=False)
        return {
            "loss_ce": nn.functional.cross_entropy(logits, batch["label"]),
            "loss_l2": 1e-3 * self.linear.weight.pow(2).sum(),
        }


def _reference_sgd(model, batches, loss_fn, lr=0.1, momentum=0.9):
    """The plain PyTorch loop the trainer must reproduce."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for batch in batches:
        loss = loss_fn(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def test_simple_trainer_trains_a_model_that_returns_its_own_losses():
    batches = _classification_batches()
    model = Classifier()
    reference = _reference_sgd(
        copy.deepcopy(model),
        batches,
        lambda m, b: nn.functional.cross_entropy(m.linear(b["x"]), b["label"]) + 1e-3 * m.linear.weight.pow(2).sum(),
    )
    trainer = SimpleTrainer(model, batches, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    trainer.train(0, len(batches))
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, dict(reference.named_parameters())[name], rtol=0, atol=0)
    history = trainer.storage.history("total_loss").values()
    assert [it for _, it in history] == list(range(len(batches)))
    assert trainer.storage.history("loss_ce").latest() + trainer.storage.history("loss_l2").latest() == pytest.approx(
        trainer.storage.history("total_loss").latest()
    )


def test_model_with_loss_trains_a_plain_model_with_a_separate_loss_function():
    batches = [(b["x"], b["x"][:, :2].sum(1, keepdim=True)) for b in _classification_batches()]
    torch.manual_seed(1)
    net = nn.Linear(5, 1)
    reference = _reference_sgd(copy.deepcopy(net), batches, lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]))

    wrapped = ModelWithLoss(
        net, loss_fn=lambda pred, batch: nn.functional.mse_loss(pred, batch[1]), inputs=lambda batch: batch[0]
    )
    trainer = SimpleTrainer(wrapped, batches, torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9))
    trainer.train(0, len(batches))
    torch.testing.assert_close(net.weight, reference.weight, rtol=0, atol=0)
    assert "loss" in trainer.storage.histories()  # a bare tensor from loss_fn becomes {"loss": t}

    wrapped.eval()  # in eval the wrapper returns predictions
    torch.testing.assert_close(wrapped(batches[0]), net(batches[0][0]))


def test_model_with_loss_keeps_a_loss_dict_and_defaults_to_the_whole_batch_as_input():
    net = nn.Linear(2, 2)
    wrapped = ModelWithLoss(net, loss_fn=lambda pred, batch: {"a": pred.sum(), "b": batch.sum()})
    x = torch.ones(3, 2)
    losses = wrapped(x)
    assert set(losses) == {"a", "b"}
    torch.testing.assert_close(losses["a"], net(x).sum())


class SquaredOutput(nn.Module):
    """Returns one bare loss tensor instead of a dict."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 1)

    def forward(self, x):
        return self.net(x).pow(2).mean()


def test_a_bare_loss_tensor_is_recorded_as_total_loss():
    model = SquaredOutput()
    trainer = SimpleTrainer(model, itertools.repeat(torch.ones(4, 2)), torch.optim.SGD(model.parameters(), lr=0.01))
    trainer.train(0, 3)
    assert len(trainer.storage.history("total_loss").values()) == 3
    assert set(trainer.storage.histories()) == {"total_loss", "data_time"}


class ExplodingModel(nn.Module):
    """Finite losses until `bad_iter`, then one NaN and one inf term."""

    def __init__(self, bad_iter):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.bad_iter = bad_iter
        self.calls = 0

    def forward(self, batch):
        base = (self.weight * batch).sum()
        bad = self.calls == self.bad_iter
        self.calls += 1
        return {
            "loss_ok": base,
            "loss_nan": base * (float("nan") if bad else 1.0),
            "loss_inf": base * (float("inf") if bad else 1.0),
        }


def test_non_finite_loss_names_every_bad_term_and_the_iteration_and_never_steps():
    model = ExplodingModel(bad_iter=3)
    weights_seen = []
    trainer = SimpleTrainer(model, itertools.repeat(torch.ones(3)), torch.optim.SGD(model.parameters(), lr=0.1))
    record_weights = hooks.CallbackHook(after_step=lambda t: weights_seen.append(model.weight.detach().clone()))
    trainer.register_hooks([record_weights])
    with pytest.raises(FloatingPointError) as error:
        trainer.train(10, 20)  # iterations are counted from start_iter: the bad one is 13
    message = str(error.value)
    assert "iteration=13" in message
    assert "loss_nan=nan" in message and "loss_inf=inf" in message
    assert "loss_ok=" not in message.split("(all losses")[0]
    torch.testing.assert_close(model.weight.detach(), weights_seen[-1])  # the bad step was not applied
    assert trainer.iter == 13


def test_a_model_returning_predictions_gets_a_clear_error():
    model = nn.Linear(2, 2)
    trainer = SimpleTrainer(model, itertools.repeat(torch.ones(1, 2)), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="ModelWithLoss"):
        trainer.train(0, 1)


def test_an_empty_loss_dict_is_rejected():
    net = nn.Linear(2, 2)
    model = ModelWithLoss(net, loss_fn=lambda pred, batch: {})
    trainer = SimpleTrainer(model, itertools.repeat(torch.ones(1, 2)), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="empty loss dict"):
        trainer.train(0, 1)


def test_a_non_scalar_loss_is_rejected_by_name():
    net = nn.Linear(2, 2)
    model = ModelWithLoss(net, loss_fn=lambda pred, batch: {"loss_vec": pred.sum(0)})
    trainer = SimpleTrainer(model, itertools.repeat(torch.ones(1, 2)), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="loss_vec"):
        trainer.train(0, 1)


def test_scalar_put_from_forward_reaches_metrics_json_and_tensorboard(tmp_path):
    batches = _classification_batches(num_batches=5)
    model = Classifier()
    trainer = SimpleTrainer(model, batches, torch.optim.SGD(model.parameters(), lr=0.1))
    writers = [JSONWriter(str(tmp_path / "metrics.json")), TensorboardXWriter(str(tmp_path))]
    trainer.register_hooks([hooks.PeriodicWriter(writers, period=2)])
    trainer.train(0, 5)

    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 3, 4]
    for record in records:
        assert record["diag/logit_scale"] == pytest.approx(model.logged[record["iteration"]])
        assert {"loss_ce", "loss_l2", "total_loss", "data_time"} <= set(record)

    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    events = accumulator.Scalars("diag/logit_scale")
    assert [e.step for e in events] == [1, 3, 4]
    assert [e.value for e in events] == pytest.approx([model.logged[i] for i in (1, 3, 4)], rel=1e-6)
    assert "loss_ce" in accumulator.Tags()["scalars"]


def test_amp_trainer_runs_the_forward_in_bfloat16_on_cpu():
    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)
            self.dtypes = []

        def forward(self, x):
            out = self.linear(x)
            self.dtypes.append(out.dtype)
            return {"loss": out.float().pow(2).mean()}

    model = Probe()
    before = model.linear.weight.detach().clone()
    trainer = AMPTrainer(
        model,
        itertools.repeat(torch.randn(8, 4)),
        torch.optim.SGD(model.parameters(), lr=0.1),
        precision=torch.bfloat16,
    )
    assert trainer.grad_scaler is None  # bfloat16 needs no loss scaling
    trainer.train(0, 3)
    assert model.dtypes == [torch.bfloat16] * 3
    assert model.linear.weight.dtype == torch.float32 and not torch.equal(model.linear.weight, before)


def test_amp_float16_needs_cuda():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="bfloat16"):
        AMPTrainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1), precision=torch.float16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_trainer_float16_with_grad_scaler_on_cuda():
    model = nn.Linear(4, 1).cuda()
    wrapped = ModelWithLoss(model, loss_fn=lambda pred, batch: pred.float().pow(2).mean())
    data = itertools.repeat(torch.randn(8, 4, device="cuda"))
    trainer = AMPTrainer(wrapped, data, torch.optim.SGD(wrapped.parameters(), lr=0.1))
    assert trainer.grad_scaler is not None
    trainer.train(0, 3)
    assert torch.isfinite(model.weight).all()
