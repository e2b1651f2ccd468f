"""Hyperparameter search (``fastdecoder tune``) on Optuna, and the LR range test (``fastdecoder lr-find``).

space.py: the YAML search space; objective.py: one trial as a run; study.py: a worker's ask/tell loop;
storage.py: journal file / RDB / Redis storages and the liveness of running trials; report.py: ``tune report``;
lr_find.py: the LR range test. Optuna is optional: ``pip install 'fastdecoder[tune]'``.
"""
