"""Where a summarize task folds (batch_jobs.worker.task_device): the GPU Spark assigned the
task when torch there can use it, the CPU otherwise, with the reason in the run report. The
end-to-end path (a standalone worker offering a GPU, tasks asking for it) runs in
test_standalone_s3.py."""

from __future__ import annotations

import pytest
import torch

from batch_jobs.fold import PartitionStats
from batch_jobs.worker import task_device

CUDA = torch.cuda.is_available()


def test_no_gpu_given_folds_on_the_cpu() -> None:
    assert task_device("task", []).device == "cpu"
    assert task_device("task", []).unusable is None
    assert task_device("cpu", ["0"]).device == "cpu"
    # Outside a Spark task there is no TaskContext: no GPU addresses.
    assert task_device("task").device == "cpu"


def test_a_given_gpu_is_taken_when_torch_can_use_it() -> None:
    placed = task_device("task", ["0"])
    assert placed.gpu_address == "0"
    if CUDA:
        assert placed.device == "cuda:0" and placed.unusable is None
    else:
        assert placed.device == "cpu"
        assert placed.unusable is not None and "no CUDA" in placed.unusable


def test_an_address_torch_does_not_see_is_unusable() -> None:
    placed = task_device("task", ["4096"])
    assert placed.device == "cpu" and placed.unusable is not None
    assert ("not index 4096" if CUDA else "no CUDA") in placed.unusable


def test_cuda_mode_without_a_usable_device_is_an_error() -> None:
    if CUDA:
        assert task_device("cuda", []).device == "cuda:0"
    else:
        with pytest.raises(RuntimeError, match="spark.device is cuda, but torch"):
            task_device("cuda", [])
    with pytest.raises(ValueError, match="task, cuda or cpu"):
        task_device("gpu", [])


def test_partition_stats_add_up_the_devices() -> None:
    total = PartitionStats()
    total.add(PartitionStats(tasks=1, tasks_on_gpu=1))
    total.add(PartitionStats(tasks=1, gpu_unusable=1, gpu_unusable_reason="GPU 1: no CUDA"))
    total.add(PartitionStats(tasks=1))
    assert (total.tasks, total.tasks_on_gpu, total.gpu_unusable) == (3, 1, 1)
    assert total.gpu_unusable_reason == "GPU 1: no CUDA"
