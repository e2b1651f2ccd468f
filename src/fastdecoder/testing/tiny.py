"""The tiny synthetic dataset section (2 days by default, b2t25 format, CPU-sized) and the tiny training run that the
trainer tests build their configs from."""


def tiny_data(seed: int, *, trials_per_day: int = 24, val_trials_per_day: int = 6, test_trials_per_day: int = 2,
              n_features: int = 16, words_per_sentence=(1, 2), n_days: int = 2, days_per_batch: int = 2) -> dict:
    """A config ``data`` section: synthetic b2t25 data of ``n_days`` sessions written through the real format,
    ``days_per_batch`` days per batch."""
    return {"synthetic": {"format": "b2t25", "n_days": n_days, "trials_per_day": trials_per_day,
                          "val_trials_per_day": val_trials_per_day, "test_trials_per_day": test_trials_per_day,
                          "n_features": n_features, "words_per_sentence": list(words_per_sentence), "seed": seed},
            "days_per_batch": days_per_batch}


#: the suite's tiny training run (3 days of 24 features, a 48-unit GRU, 160 steps on the CPU in seconds); tests
#: build theirs from it (``tiny_config``), changing only what they test
TINY_RUN = {
    "name": "tiny",
    "data": tiny_data(3, trials_per_day=48, val_trials_per_day=12, test_trials_per_day=4, n_features=24,
                      words_per_sentence=(1, 3)),
    "model": {"hidden_size": 48, "num_layers": 1, "rnn_dropout": 0.0, "input_dropout": 0.0},
    "augment": {"white_noise_std": 0.2, "constant_offset_std": 0.05, "random_cut": 3},
    "optim": {"lr": 0.02, "warmup_steps": 5, "decay_steps": 160, "lr_min": 0.001},
    "train": {"steps": 160, "batch_size": 16, "eval_every": 80, "log_every": 20, "checkpoint_every": 80,
              "amp": "none", "beam_width": 4},
}


class _Default:
    """The type of ``DEFAULT``: one instance, kept by copies."""

    def __repr__(self):
        return "DEFAULT"

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


#: a key given this value in ``tiny_config`` is left out of the run, so the config's own default applies
DEFAULT = _Default()

#: TINY_RUN's train keys but ``amp`` at the config's defaults (steps, batch size, intervals, beam width), for runs
#: saved untrained or stepped by hand: ``tiny_config(train={**TRAIN_DEFAULTS, ...})``
TRAIN_DEFAULTS = {key: DEFAULT for key in TINY_RUN["train"] if key != "amp"}


def tiny_config(name: str | None = None, *, data: dict | None = None, **sections) -> dict:
    """A deep copy of TINY_RUN (a plain config dict) changed by:

    name: the run's name (TINY_RUN's "tiny" when None);
    data: the whole ``data`` section in place of TINY_RUN's (``tiny_data(...)``, or ``{"path": ..., ...}`` for data
      on disk);
    sections: {section: {key: value}} merged into TINY_RUN's sections; a value of ``DEFAULT`` removes the key and a
      section given as None is removed whole, so the config's defaults apply there.
    """
    import copy

    d = copy.deepcopy(TINY_RUN)
    if name is not None:
        d["name"] = name
    if data is not None:
        d["data"] = copy.deepcopy(data)
    for sec, values in sections.items():
        if values is None:
            d.pop(sec, None)
            continue
        merged = d.setdefault(sec, {})
        for key, value in values.items():
            if value is DEFAULT:
                merged.pop(key, None)
            else:
                merged[key] = copy.deepcopy(value)
    return d


def tiny_causal_run(out, name: str = "tiny-causal", *, seed: int = 4, head_gain: float = 8.0):
    """An untrained run folder of a tiny causal model (2 x 24 GRU, 12 features, fp32) with ``last.pt`` saved, its
    head scaled by ``head_gain`` so posteriors are peaky and phonemes and words get decoded. Returns the Trainer."""
    import torch

    from fastdecoder.config import config_from_dict
    from fastdecoder.train.trainer import Trainer

    cfg = tiny_config(name, data=tiny_data(seed, trials_per_day=12, val_trials_per_day=5, n_features=12),
                      model={"hidden_size": 24, "num_layers": 2}, augment=None, optim=None,
                      train=TRAIN_DEFAULTS)
    trainer = Trainer(config_from_dict(cfg), out, progress=False)
    with torch.no_grad():
        trainer.model.head.weight.mul_(head_gain)
    trainer.save("last.pt")
    return trainer
