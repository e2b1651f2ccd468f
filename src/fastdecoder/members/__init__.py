"""K models trained as one batched model (``train.members``): each member the run ``fastdecoder train`` would give
alone with its own seed and the shared data seed (with ``train.member_batch_order: own``, its own data seed).

config.py: the members' solo configs; model.py: the batched GRUDecoder; optim.py: the per-member AdamW. The loop is
fastdecoder.train.members.
"""
