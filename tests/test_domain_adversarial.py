"""Domain-adversarial stage 2: the gradient reversal, the loss around the contrastive one, the batch and data keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mssn_monai.data.patches import PatchSampleDataset
from mssn_monai.engines import PrepareBatchClass
from mssn_monai.losses import DomainAdversarialLoss, MarginContrastiveLoss, grad_reverse


def test_grad_reverse_is_identity_forward_and_negated_scaled_backward():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = grad_reverse(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.25, -0.5, -0.75]))


def test_weight_zero_or_class_target_is_the_base_loss():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    classes = torch.tensor([0, 1, 2, 1, 0, 2])
    target = torch.stack([classes, torch.tensor([0, 0, 1, 1, 2, 2])], dim=1)
    base = MarginContrastiveLoss(binary=True)
    off = DomainAdversarialLoss(base, num_domains=3, embedding_dim=4, weight=0.0)
    assert torch.equal(off(emb, target), base(emb, classes))
    on = DomainAdversarialLoss(base, num_domains=3, embedding_dim=4, weight=0.5)
    assert torch.equal(on(emb, classes), base(emb, classes))  # a (B,) target: no domain, no head
    one = DomainAdversarialLoss(base, num_domains=1, embedding_dim=4, weight=0.5)
    assert torch.equal(one(emb, target), base(emb, classes))  # one domain: nothing to hide
    with pytest.raises(ValueError, match="weight"):
        DomainAdversarialLoss(base, 3, 4, weight=-1.0)


def test_the_head_learns_the_domain_and_the_embedding_gets_the_reversed_gradient():
    torch.manual_seed(0)
    emb = torch.randn(8, 4, requires_grad=True)
    target = torch.stack([torch.zeros(8, dtype=torch.long), torch.tensor([0, 1] * 4)], dim=1)
    zero = lambda e, c: e.sum() * 0.0  # noqa: E731 - isolate the adversarial term
    loss = DomainAdversarialLoss(zero, num_domains=2, embedding_dim=4, weight=0.5)
    value = loss(emb, target)
    value.backward()
    head_only = emb.detach().clone().requires_grad_(True)  # the same cross-entropy without the reversal
    torch.nn.functional.cross_entropy(loss.head(head_only), target[:, 1]).backward()
    torch.testing.assert_close(emb.grad, -0.5 * head_only.grad)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.head.parameters())


def test_batch_and_dataset_carry_the_domain(tmp_path):
    from mssn_monai.data.formats import read_mitos_atypia14
    from mssn_monai.data.synthetic import generate_dataset

    generate_dataset(tmp_path, n_images=3, size=(256, 256), seed=4, frames_per_slide=1)
    records = read_mitos_atypia14(tmp_path)
    records = [{**r, "domain": d} for r, d in zip(records, ["lab b", "lab a", "lab b"], strict=True)]
    records[2].pop("domain")
    ds = PatchSampleDataset(records, patch_size=32, samples_per_epoch=12, positive_fraction=0.0, mimic_fraction=0.0)
    assert ds.domains == ["", "lab a", "lab b"]
    for i in range(len(ds)):
        sample = ds[i]
        expected = ["lab b", "lab a", ""][sample["image_index"]]
        assert int(sample["domain"]) == ds.domains.index(expected)
    batch = {"image": torch.zeros(3, 3, 8, 8), "class": torch.tensor([0, 1, 2]), "domain": torch.tensor([2, 0, 1])}
    image, target = PrepareBatchClass(domain_key="domain")(batch)
    assert target.tolist() == [[0, 2], [1, 0], [2, 1]] and image.shape == (3, 3, 8, 8)
    assert PrepareBatchClass()(batch)[1].tolist() == [0, 1, 2]
    with pytest.raises(KeyError, match="domain"):
        PrepareBatchClass(domain_key="domain")({"image": batch["image"], "class": batch["class"]})
    assert np.isfinite(DomainAdversarialLoss(MarginContrastiveLoss(), 3, 32, 0.1)(torch.randn(3, 32), target).item())


def test_train_json_wires_the_domain_head_into_stage_two(tmp_path):
    """``--domain_adversarial_weight``: the loss gets one head output per training domain, the optimizer and
    the checkpoint hold the head, and one step on a real batch moves both the head and the embedding."""
    from monai.bundle import ConfigParser

    from mssn_monai.data.datalist import write_datalist
    from mssn_monai.data.formats import read_mitos_atypia14
    from mssn_monai.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "fields", n_images=4, size=(512, 512), seed=6, frames_per_slide=1)
    records = sorted(read_mitos_atypia14(tmp_path / "fields"), key=lambda r: -len(r["mitoses"]))
    assert records[0]["mitoses"]  # stage 2 samples a third of its patches on mitoses
    training = [{**r, "domain": "lab a" if i % 2 else "lab b"} for i, r in enumerate(records[:3])]
    write_datalist({"training": training, "validation": records[3:]}, tmp_path / "datalist.json")
    root = Path(__file__).resolve().parents[1] / "bundle"
    parser = ConfigParser()
    parser.read_config(root / "configs" / "train.json")
    parser.update(
        {
            "bundle_root": str(tmp_path),
            "dataset_dir": str(tmp_path),
            "num_workers": 0,
            "fpr_batch_size": 8,
            "fpr_samples_per_epoch": 8,
            "domain_adversarial_weight": 0.5,
        }
    )
    loss = parser.get_parsed_content("fpr_train#loss")
    assert isinstance(loss, DomainAdversarialLoss) and loss.num_domains == 2 and loss.weight == 0.5
    optimizer = parser.get_parsed_content("fpr_train#optimizer")
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in loss.head.parameters())
    assert parser.get_parsed_content("fpr_train#training_state")["domain_head"] is loss
    network = parser.get_parsed_content("fpr_network")
    batch = next(iter(parser.get_parsed_content("fpr_train#dataloader")))
    image, target = parser.get_parsed_content("fpr_train#prepare_batch")(batch)
    assert target.shape == (8, 2) and set(target[:, 1].tolist()) <= {0, 1}
    before = [p.detach().clone() for p in (*loss.head.parameters(), *network.parameters())]
    optimizer.zero_grad()
    loss(network(image), target).backward()
    optimizer.step()
    after = [p.detach() for p in (*loss.head.parameters(), *network.parameters())]
    n_head = len(list(loss.head.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before[:n_head], after[:n_head], strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before[n_head:], after[n_head:], strict=True))
