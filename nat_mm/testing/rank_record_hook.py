"""A test-only mmengine hook (imported through a config's ``custom_imports``): each process of a
distributed run records the images it trained on and, at the end, its own weights.

Writes ``<work_dir>/rank<r>.pth`` = ``{'params': {name: tensor}, 'img_paths': [...]}``.
"""
import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class RankRecordHook(Hook):

    def before_run(self, runner) -> None:
        self.img_paths = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.img_paths += [s.metainfo['img_path'] for s in data_batch['data_samples']]

    def after_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        params = {k: v.detach().cpu().clone() for k, v in model.named_parameters()}
        torch.save(dict(params=params, img_paths=self.img_paths),
                   osp.join(runner.work_dir, f'rank{runner.rank}.pth'))
