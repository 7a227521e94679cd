"""Equal scores (common: `norm` scores of repeated tokens) are kept in the same order on every device: ties
go to the earlier position, so CPU and CUDA runs choose the same memory."""
import torch

from bmojo.ops.selection import Entries, memory_update, top


def test_top_breaks_ties_to_the_lower_index():
    prio = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert top(prio, 2).tolist() == [[1, 2]]
    assert top(prio, 4).tolist() == [[1, 2, 4, 3]]


def test_memory_update_keeps_the_older_of_equal_entries():
    mem = Entries(torch.tensor([[5.0, 2.0]]), torch.tensor([[3, 1]]), torch.tensor([[3, 1]]))
    cand = Entries(torch.tensor([[2.0, 5.0, 2.0]]), torch.tensor([[8, 9, 10]]), torch.tensor([[8, 9, 10]]))
    out = memory_update(mem, cand, rule="topk")
    assert out.pos.tolist() == [[3, 9]]  # 5.0 at positions 3 and 9: both kept; the 2.0 ties lose
    mem = Entries(torch.tensor([[5.0, 2.0, 1.0]]), torch.tensor([[3, 1, 0]]), torch.tensor([[3, 1, 0]]))
    out = memory_update(mem, cand, rule="topk")
    assert out.pos.tolist() == [[3, 9, 1]]  # of the three 2.0s, the oldest (position 1) stays
