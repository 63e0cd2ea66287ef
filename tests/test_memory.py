"""The memory primitive and DAAD's block divide/assemble."""

import pytest
import torch

from defectmap.models.memory import BlockMemory, Memory, addressing_entropy, assemble_blocks, divide_blocks


@pytest.mark.parametrize("block", [1, 2, 4, 8])
def test_divide_and_assemble_are_exact_inverses(block):
    features = torch.randn(2, 5, 16, 24)
    rows = divide_blocks(features, block)
    assert rows.shape == (2 * (16 // block) * (24 // block), 5 * block * block)
    assert torch.equal(assemble_blocks(rows, features.shape, block), features)
    # each row is one spatial block: the top-left block of image 0 holds exactly those pixels
    assert torch.equal(rows[0].reshape(5, block, block), features[0, :, :block, :block])


def test_indivisible_feature_map_is_rejected():
    with pytest.raises(ValueError, match="not divisible"):
        divide_blocks(torch.zeros(1, 1, 10, 10), 4)


def test_addressing_weights_are_a_sparse_distribution():
    torch.manual_seed(0)
    queries = torch.randn(64, 12)
    dense = Memory(items=20, dim=12, temperature=0.5, shrink=0.0)
    sparse = Memory(items=20, dim=12, temperature=0.5, shrink=0.05)
    sparse.load_state_dict(dense.state_dict())
    for memory in (dense, sparse):
        weights = memory.address(queries)
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(1), torch.ones(64))
    dense_w, sparse_w = dense.address(queries), sparse.address(queries)
    assert (dense_w > 0).all()
    assert (sparse_w == 0).float().mean() > 0.3  # hard shrinkage zeroes the small weights
    assert addressing_entropy(sparse_w) < addressing_entropy(dense_w)


def test_block_memory_reads_memory_items_back():
    torch.manual_seed(0)
    module = BlockMemory(channels=3, block=2, items=4, temperature=0.01)
    # A feature map built from memory items is rebuilt almost exactly (sharp addressing).
    items = module.memory.items.detach()
    rows = items[torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])]
    features = assemble_blocks(rows, torch.Size([2, 3, 4, 4]), 2)
    rebuilt, weights = module(features)
    assert weights.shape == (8, 4)
    torch.testing.assert_close(rebuilt, features, atol=1e-3, rtol=0)


def test_partition_memory_bank_reads_each_cell_from_its_own_memory():
    from defectmap.models.pmb import PartitionMemoryBank

    torch.manual_seed(0)
    bank = PartitionMemoryBank(channels=3, grid=2, items=2, kernel=1, temperature=0.1)
    bank.shrink = 0.0  # (two tied weights of 1/2 would both be shrunk away at lambda = 1/N)
    with torch.no_grad():
        bank.items[:, 1] = bank.items[:, 0]  # each memory holds one distinct item (twice)
    features = torch.randn(2, 3, 4, 6)
    read, weights = bank(features)
    assert read.shape == features.shape and weights.shape == (4, 2 * 2 * 3, 2)
    # every pixel of a cell reads exactly that cell's item, whatever its addressing weights
    items = bank.items.detach()  # (G*G, 2, C): cells in row-major order
    for cell, (ys, xs) in enumerate([(slice(0, 2), slice(0, 3)), (slice(0, 2), slice(3, 6)),
                                     (slice(2, 4), slice(0, 3)), (slice(2, 4), slice(3, 6))]):  # fmt: skip
        expected = items[cell, 0][None, :, None, None].expand(2, 3, 2, 3)
        torch.testing.assert_close(read[:, :, ys, xs], expected)
