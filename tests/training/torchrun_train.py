"""Run by ``torchrun`` from tests/training/test_distributed.py (not a test module): train every job of a
pickled list in one process group, on CPU with gloo.

Each job is ``(model_dir, pairs, out_dir, method, hparams, optim, reference_logps, nan_on_rank)``;
``nan_on_rank`` makes that rank's loss NaN at step 1 (the other ranks' losses stay finite).
"""

from __future__ import annotations

import os
import pickle
import sys

import torch


def main(jobs_file: str) -> None:
    from posweep.losses.functions import LossOutput
    from posweep.training import trainer

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    real_compute_loss = trainer.compute_loss
    with open(jobs_file, "rb") as f:
        jobs = pickle.load(f)
    for model_dir, pairs, out_dir, method, hparams, optim, reference, nan_on_rank in jobs:
        def compute_loss(name, nan=nan_on_rank == rank, **kwargs):
            output = real_compute_loss(name, **kwargs)
            return LossOutput(output.losses * float("nan"), output.chosen_rewards, output.rejected_rewards) if nan else output

        trainer.compute_loss = compute_loss
        trainer.train(model_dir, pairs, out_dir, optim, method=method, hparams=hparams, reference_logps=reference,
                      progress=False, device="cpu")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
