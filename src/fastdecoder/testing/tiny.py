"""The tiny synthetic dataset section the trainer tests share (2 days by default, b2t25 format, CPU-sized)."""


def tiny_data(seed: int, *, trials_per_day: int = 24, val_trials_per_day: int = 6, test_trials_per_day: int = 2,
              n_features: int = 16, words_per_sentence=(1, 2), n_days: int = 2) -> dict:
    """A config ``data`` section: synthetic b2t25 data of ``n_days`` sessions written through the real format, 2 days
    per batch."""
    return {"synthetic": {"format": "b2t25", "n_days": n_days, "trials_per_day": trials_per_day,
                          "val_trials_per_day": val_trials_per_day, "test_trials_per_day": test_trials_per_day,
                          "n_features": n_features, "words_per_sentence": list(words_per_sentence), "seed": seed},
            "days_per_batch": 2}


#: the suite's tiny training run (3 days of 24 features, a 48-unit GRU, 160 steps on the CPU in seconds); tests
#: copy it (``tiny_config``) and change what they test
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


def tiny_config(**sections) -> dict:
    """A deep copy of TINY_RUN with ``sections`` ({section: {key: value}}) merged into it."""
    import copy

    d = copy.deepcopy(TINY_RUN)
    for sec, values in sections.items():
        d.setdefault(sec, {}).update(values)
    return d


def tiny_causal_run(out, name: str = "tiny-causal", *, seed: int = 4, head_gain: float = 8.0):
    """An untrained run folder of a tiny causal model (2 x 24 GRU, 12 features, fp32) with ``last.pt`` saved, its
    head scaled by ``head_gain`` so posteriors are peaky and phonemes and words get decoded. Returns the Trainer."""
    import torch

    from fastdecoder.config import config_from_dict
    from fastdecoder.train.trainer import Trainer

    cfg = {"name": name, "data": tiny_data(seed, trials_per_day=12, val_trials_per_day=5, n_features=12),
           "model": {"hidden_size": 24, "num_layers": 2, "rnn_dropout": 0.0, "input_dropout": 0.0},
           "train": {"amp": "none"}}
    trainer = Trainer(config_from_dict(cfg), out, progress=False)
    with torch.no_grad():
        trainer.model.head.weight.mul_(head_gain)
    trainer.save("last.pt")
    return trainer
