"""The GRU recurrence: the reference is ``torch.nn.GRU``; its fast paths live here together.

* ``cpu``: the training fast path on the CPU (input projections of all steps as one product, fused gates);
* ``native_step``: the native fp32 per-frame step of streaming decoding (``fastdecoder._native``), weights per call;
* ``members``: K members' GRUs as one batched recurrence (``train.members``).

Each is tested against ``torch.nn.GRU`` (the members against K separate ones).
"""
