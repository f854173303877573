import copy
import pickle

import pytest
import torch

from detlib.structures import Boxes, Instances, PolygonMasks


def _make(n: int, offset: int = 0) -> Instances:
    inst = Instances((20, 30))
    inst.gt_boxes = Boxes(torch.arange(4 * n, dtype=torch.float32).view(n, 4) + offset)
    inst.gt_classes = torch.arange(n) + offset
    inst.names = [f"obj{i + offset}" for i in range(n)]
    return inst


def test_fields_set_get_has_remove():
    inst = _make(3)
    assert inst.image_size == (20, 30)
    assert len(inst) == 3
    assert inst.has("gt_classes") and not inst.has("scores")
    assert inst.get("gt_classes") is inst.gt_classes
    assert list(inst.get_fields()) == ["gt_boxes", "gt_classes", "names"]
    inst.remove("names")
    assert not inst.has("names")
    with pytest.raises(AttributeError, match="no field 'scores'"):
        inst.scores
    with pytest.raises(KeyError):
        inst.remove("scores")
    inst2 = Instances((5, 6), scores=torch.ones(2))
    assert len(inst2) == 2


def test_field_length_mismatch_is_a_clear_error():
    inst = _make(3)
    with pytest.raises(ValueError, match=r"'scores' has length 2.*gt_boxes, gt_classes, names.*length 3"):
        inst.scores = torch.ones(2)
    # Replacing a field with one of the same length is fine.
    inst.gt_classes = torch.zeros(3, dtype=torch.long)
    assert inst.gt_classes.sum() == 0


def test_len_of_fieldless_instances_is_an_error():
    with pytest.raises(NotImplementedError):
        len(Instances((1, 1)))


def test_indexing():
    inst = _make(4)
    one = inst[2]
    assert len(one) == 1
    assert torch.equal(one.gt_boxes.tensor, inst.gt_boxes.tensor[2:3])
    assert one.names == ["obj2"]
    assert inst[-1].gt_classes.tolist() == [3]
    with pytest.raises(IndexError):
        inst[4]
    picked = inst[inst.gt_classes % 2 == 0]
    assert picked.gt_classes.tolist() == [0, 2]
    assert torch.equal(picked.gt_boxes.tensor, inst.gt_boxes.tensor[[0, 2]])
    assert inst[1:3].names == ["obj1", "obj2"]
    assert inst[torch.tensor([3, 0])].gt_classes.tolist() == [3, 0]
    with pytest.raises(NotImplementedError):
        iter(inst)


def test_cat_tensors_boxes_lists_and_masks():
    a, b = _make(2), _make(3, offset=10)
    a.gt_masks = PolygonMasks([[[0, 0, 1, 0, 1, 1]]] * 2)
    b.gt_masks = PolygonMasks([[[5, 5, 6, 5, 6, 6]]] * 3)
    cat = Instances.cat([a, b])
    assert len(cat) == 5
    assert cat.gt_classes.tolist() == [0, 1, 10, 11, 12]
    assert torch.equal(cat.gt_boxes.tensor, torch.cat([a.gt_boxes.tensor, b.gt_boxes.tensor]))
    assert cat.names == ["obj0", "obj1", "obj10", "obj11", "obj12"]
    assert len(cat.gt_masks) == 5 and cat.gt_masks.polygons[4][0][0] == 5.0
    with pytest.raises(ValueError, match="image sizes"):
        Instances.cat([a[:0], Instances((1, 1), gt_classes=torch.zeros(0))])
    b.remove("names")
    with pytest.raises(ValueError, match="fields differ"):
        Instances.cat([a, b])


def test_to_repr_copy():
    inst = _make(2)
    moved = inst.to("cpu")
    assert moved.names == inst.names and moved.gt_boxes.device.type == "cpu"
    text = repr(inst)
    assert "num_instances=2" in text and "image_height=20" in text and "image_width=30" in text
    assert "gt_classes" in text
    for clone in (copy.deepcopy(inst), pickle.loads(pickle.dumps(inst))):
        assert clone.gt_classes.tolist() == [0, 1] and clone.image_size == (20, 30)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda():
    inst = _make(2).to("cuda")
    assert inst.gt_boxes.device.type == "cuda" and inst.gt_classes.device.type == "cuda"


def test_num_instances_is_len_and_symbolic_while_exporting():
    inst = Instances((10, 20), boxes=Boxes(torch.zeros(3, 4)), scores=torch.zeros(3))
    assert inst.num_instances() == len(inst) == 3

    class Keep(torch.nn.Module):
        def forward(self, scores):
            kept = Instances((10, 20), scores=scores[scores > 0.5])
            return torch.zeros(kept.num_instances())

    sample = (torch.tensor([0.9, 0.1, 0.7]),)
    dynamic = ({0: torch.export.Dim("n")},)
    program = torch.export.export(Keep(), sample, dynamic_shapes=dynamic, strict=False).module()
    assert program(torch.tensor([0.6, 0.2, 0.8, 0.9])).shape == (3,)
