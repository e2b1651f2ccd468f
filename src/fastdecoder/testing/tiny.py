"""The tiny synthetic dataset section the trainer tests share (2 days by default, b2t25 format, CPU-sized)."""


def tiny_data(seed: int, *, trials_per_day: int = 24, val_trials_per_day: int = 6, test_trials_per_day: int = 2,
              n_features: int = 16, words_per_sentence=(1, 2), n_days: int = 2) -> dict:
    """A config ``data`` section: synthetic b2t25 data of ``n_days`` sessions written through the real format, 2 days
    per batch."""
    return {"synthetic": {"format": "b2t25", "n_days": n_days, "trials_per_day": trials_per_day,
                          "val_trials_per_day": val_trials_per_day, "test_trials_per_day": test_trials_per_day,
                          "n_features": n_features, "words_per_sentence": list(words_per_sentence), "seed": seed},
            "days_per_batch": 2}
