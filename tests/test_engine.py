import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fit_classifier

from lptlib.config import parse
from lptlib.data import ArrayDataset, ClassAwareSampler, LTData, Normalization, build_transforms, make_loader
from lptlib.measure.metrics import POSTHOC_TAUS
from lptlib.models import create_backbone
from lptlib.models.backbones import BackboneConfig
from lptlib.models.peft import PEFTClassifier

COUNTS = np.array([12, 6, 3])


def loaders(seed=0):
    rng = np.random.default_rng(0)

    def make(counts):
        y = np.repeat(np.arange(3), counts)
        x = (rng.random((len(y), 28, 28)) * 80 + y[:, None, None] * 60).astype(np.uint8)
        return ArrayDataset(x, y)

    train_tf, test_tf = build_transforms(parse().data, Normalization((0.5,) * 3, (0.5,) * 3))
    train = make(COUNTS).with_transform(train_tf)
    return (
        make_loader(train, 8, ClassAwareSampler(train.targets, 2, seed=seed)),
        make_loader(make([4, 4, 4]).with_transform(test_tf), 16),
        make_loader(make([5, 5, 5]).with_transform(test_tf), 16),
    )


def model():
    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig("vit-mini", "random"))
    return PEFTClassifier(backbone, 3, prompt_length=2, head_dropout=0.1)


def ce(m, batch, epoch):
    x, y = batch
    return F.cross_entropy(m(x), y)


KW = dict(
    epochs=3, lr=0.05, weight_decay=1e-4, momentum=0.9, warmup_epochs=1, shot_counts=np.array([150, 50, 5])
)  # one class per shot group (no NaN group)


def test_resume_after_an_interruption_gives_identical_results(tmp_path):
    torch.manual_seed(123)
    full = fit_classifier(model(), *loaders(), ce, checkpoint=tmp_path / "a.pt", resume="never", **KW)

    class Killed(Exception):
        pass

    def killed_in_the_second_epoch(m, batch, epoch):  # the checkpoint of the first epoch is on disk by then
        if epoch == 1:
            raise Killed
        return ce(m, batch, epoch)

    torch.manual_seed(123)
    with pytest.raises(Killed):
        fit_classifier(
            model(), *loaders(), killed_in_the_second_epoch, checkpoint=tmp_path / "b.pt", resume="never", **KW
        )
    torch.manual_seed(999)  # the resumed process starts from another RNG state
    resumed = fit_classifier(model(), *loaders(), ce, checkpoint=tmp_path / "b.pt", resume="auto", **KW)
    assert resumed.resumed_from_epoch == 0
    assert resumed.history == full.history
    assert resumed.test == full.test and resumed.val_best_epoch == full.val_best_epoch
    assert torch.equal(resumed.test_predictions, full.test_predictions)


def test_the_final_state_is_reported_and_test_is_evaluated_once(tmp_path):
    seen = []
    m = model()
    original = m.forward

    def counting_forward(x):
        seen.append(x.shape[0])
        return original(x)

    m.forward = counting_forward
    train, val, test = loaders()
    result = fit_classifier(m, train, val, test, ce, resume="never", **KW)
    vals = [h["val_overall"] for h in result.history]
    assert result.val["overall"] == vals[-1]  # the reported state is the last epoch's, whatever val says
    assert result.val_best_epoch == max(i for i, v in enumerate(vals) if v == max(vals))  # info only; ties: later
    assert result.val_best_overall == max(vals)
    assert seen.count(15) == 1  # the 15-image test set went through the model exactly once
    m.forward = original
    m.eval()
    with torch.no_grad():
        final = torch.cat([m(x).argmax(1) for x, _ in test])
    assert torch.equal(result.test_predictions, final)  # the test predictions are the final state's
    row = result.row(5)
    assert row["epochs"] == 3 and row["val_best_epoch"] == result.val_best_epoch and "best_epoch" not in row
    assert row["posthoc_tau"] in POSTHOC_TAUS and 0 <= row["posthoc_overall"] <= 1  # the test set's one more score


def test_val_every_k_epochs_and_after_the_last():
    train, val, test = loaders()
    result = fit_classifier(model(), train, val, test, ce, resume="never", **{**KW, "epochs": 5}, val_every=2)
    assert [h["epoch"] for h in result.history if "val_overall" in h] == [1, 3, 4]


def test_without_test_the_test_split_is_never_touched():
    from lptlib.engine import Schedule, classifier_run, fit

    train, val, test = loaders()

    class Untouchable(ArrayDataset):
        def load(self, i):
            raise AssertionError("the test split was evaluated")

    untouchable = Untouchable(test.dataset.images, test.dataset.targets)
    data = LTData("toy_lt", ["a", "b", "c"], train.dataset, val.dataset, untouchable, group_counts=KW["shot_counts"])
    schedule = Schedule(epochs=1, lr=0.05, val_every=1)
    run = classifier_run(model(), train, ce, schedule, data, resume="never")
    result = fit(run, test=False)
    assert result.test == {} and result.val is not None


def test_no_val_split_reports_the_last_epoch():
    train, _, test = loaders()
    result = fit_classifier(model(), train, None, test, ce, resume="never", **KW)
    assert result.epochs == 3 and result.val is None and result.val_best_epoch is None


def test_auto_resume_with_a_mismatching_checkpoint_starts_over(tmp_path):
    """'auto' with a checkpoint of another run starts over instead of failing (a path given to `resume` fails:
    the table of tests/test_reliability.py)."""
    train, val, test = loaders()
    fit_classifier(model(), train, val, test, ce, checkpoint=tmp_path / "c.pt", resume="never", **{**KW, "epochs": 1})
    other = PEFTClassifier(model().backbone, 3, prompt_length=5)
    result = fit_classifier(
        other, train, val, test, ce, checkpoint=tmp_path / "c.pt", resume="auto", **{**KW, "epochs": 1}
    )
    assert result.resumed_from_epoch is None
