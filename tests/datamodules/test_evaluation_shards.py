"""Under DDP the validation and test splits are dealt to the ranks without the repeats Lightning's sampler pads with."""

from types import SimpleNamespace

import pytest
from pytorch_lightning.strategies import DDPStrategy, ModelParallelStrategy, Strategy
from torch.utils.data import DistributedSampler, SequentialSampler

from lightning_sam.datamodules import ToyDataModule


@pytest.fixture
def toy() -> ToyDataModule:
    data = ToyDataModule(n_train=8, n_val=127, n_probe=8, batch_size=32, evaluation_batch_size=0)
    data.setup()
    return data


def _on_rank(data: ToyDataModule, world_size: int, rank: int, strategy: Strategy | None = None) -> ToyDataModule:
    strategy = strategy or DDPStrategy()
    data.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, strategy=strategy)  # type: ignore[assignment]
    return data


@pytest.mark.parametrize("split", ["val", "test"])
def test_two_ranks_evaluate_every_example_once(toy: ToyDataModule, split: str) -> None:
    shards = []
    for rank in (0, 1):
        loader = getattr(_on_rank(toy, 2, rank), f"{split}_dataloader")()
        assert isinstance(loader.sampler, DistributedSampler)  # Lightning keeps a distributed sampler as it is
        shards.append(list(loader.sampler))
    assert [len(shard) for shard in shards] == [64, 63]  # padded, rank 1 would repeat example 0
    assert sorted(shards[0] + shards[1]) == list(range(127))
    assert shards[0] == list(range(0, 127, 2))  # in dataset order


def test_one_process_and_a_split_smaller_than_the_world_keep_the_plain_loader(toy: ToyDataModule) -> None:
    assert isinstance(_on_rank(toy, 1, 0).val_dataloader().sampler, SequentialSampler)
    assert isinstance(_on_rank(toy, 200, 3).val_dataloader().sampler, SequentialSampler)  # no rank may get nothing
    # probe data are sharded by the callbacks that read them, training data by Lightning's sampler
    for loader in (*_on_rank(toy, 2, 0).probe_dataloaders(), toy.train_dataloader()):
        assert not isinstance(loader.sampler, DistributedSampler)


def test_a_sharded_model_evaluates_with_lightnings_sampler_as_its_forwards_are_collectives(toy: ToyDataModule) -> None:
    # unpadded, 129 examples at 32 per batch are 3 batches on rank 0 and 2 on rank 1: under FSDP2 every forward
    # gathers parameters, and rank 0's third batch would wait forever for rank 1
    data = ToyDataModule(n_train=8, n_val=129, n_probe=8, batch_size=32, evaluation_batch_size=0)
    data.setup()
    for split in ("val", "test"):
        loader = getattr(_on_rank(data, 2, 0, ModelParallelStrategy()), f"{split}_dataloader")()
        assert isinstance(loader.sampler, SequentialSampler)  # left to Lightning, which pads to equal shares
