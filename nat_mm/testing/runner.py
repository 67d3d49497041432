"""A toy mmengine Runner, for tests of what the Runner does with checkpoints (save, resume,
load_from through every scheme) without a real model.
"""
import torch
from torch import nn

__all__ = ['train_toy_runner']


def train_toy_runner(work_dir, max_epochs, resume=False, load_from=None, custom_hooks=None):
    """Train a 2-parameter model for ``max_epochs`` epochs of 2 iterations with a checkpoint
    each epoch in ``work_dir``; ``resume``, ``load_from`` and ``custom_hooks`` go to the
    Runner. Returns the Runner."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class ToyModel(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            out = self.linear(torch.stack(inputs))
            return dict(loss=out.square().mean()) if mode == 'loss' else out

    dataset = [dict(inputs=torch.randn(2)) for _ in range(4)]
    runner = Runner(
        model=ToyModel(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=dataset, batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
                              end=2),
                         dict(type='MultiStepLR', milestones=[1], by_epoch=True)],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1),
                           logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0), resume=resume, load_from=load_from, custom_hooks=custom_hooks,
        env_cfg=dict(dist_cfg=dict(backend='gloo')))
    runner.train()
    return runner
