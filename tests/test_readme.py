"""The README's Python examples run, in order, in one namespace, against small stand-ins for what they name: the
published reference checkpoints (random weights in the cffan and NEJM layouts, at the README's paths), run folders
(tiny untrained runs), ``lm.arpa`` (a 2-gram of English sentences), a local causal LM, and the arrays the text
describes (``x``, ``day_idx``, ``lengths``, ``targets``, ...)."""
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SENTENCES = ["hello world", "how are you", "the cat sat on the mat", "you are here", "hello there"]


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def _gru_state(prefix, n_in, hidden, layers, bidirectional):
    gru = torch.nn.GRU(n_in, hidden, layers, bidirectional=bidirectional, batch_first=True)
    return {f"{prefix}.{k}": v.detach().clone() for k, v in gru.state_dict().items()}


def _reference_checkpoints(root: Path, C: int, D: int, H: int) -> None:
    """Random-weight checkpoints in the layouts load_reference_checkpoint reads, where the README points."""
    sd = {"dayWeights": torch.eye(C).repeat(D, 1, 1), "dayBias": torch.zeros(D, 1, C),
          "gaussianSmoother.weight": torch.full((C, 1, 20), 1 / 20), "fc_decoder_out.weight": torch.randn(41, 2 * H),
          "fc_decoder_out.bias": torch.zeros(41), "inpLayer0.weight": torch.eye(C), "inpLayer0.bias": torch.zeros(C)}
    sd.update(_gru_state("gru_decoder", 32 * C, H, 1, True))
    (root / "neural_seq_decoder/outputs").mkdir(parents=True)
    torch.save(sd, root / "neural_seq_decoder/outputs/modelWeights")
    msd = {f"day_weights.{i}": torch.eye(C) for i in range(D)}
    msd.update({f"day_biases.{i}": torch.zeros(1, C) for i in range(D)})
    msd.update(_gru_state("gru", 14 * C, H, 1, False))
    msd.update({"out.weight": 4 * torch.randn(41, H), "out.bias": torch.zeros(41), "h0": torch.zeros(1, 1, H)})
    (root / "trained_models/baseline_rnn/checkpoint").mkdir(parents=True)
    torch.save({"model_state_dict": msd}, root / "trained_models/baseline_rnn/checkpoint/best_checkpoint")


def test_readme_python_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="the rescoring example loads a causal LM (pip install "
                                               "'fastdecoder[llm]')")
    from fastdecoder.config import config_from_dict
    from fastdecoder.decode import build_lm
    from fastdecoder.testing.tiny import tiny_data
    from fastdecoder.testing.tiny_lm import save_tiny_lm
    from fastdecoder.train.trainer import Trainer

    blocks = python_blocks()
    assert len(blocks) >= 7 and any("error_rate(beam, targets)" in b for b in blocks)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # CPU tensors take the reference ops (the README's 'auto')
    torch.manual_seed(0)
    C, D, H, B, T = 8, 3, 16, 3, 60
    _reference_checkpoints(tmp_path, C, D, H)
    cfg = config_from_dict({"name": "readme", "data": tiny_data(3, trials_per_day=8, val_trials_per_day=3,
                                                                n_features=C),
                            "model": {"hidden_size": H, "num_layers": 1, "rnn_dropout": 0.0, "input_dropout": 0.0},
                            "train": {"amp": "none"}})
    trainer = Trainer(cfg, tmp_path / "runs/b2t25", progress=False)
    trainer.save("best.pt")
    for name in ("a", "b"):
        shutil.copytree(tmp_path / "runs/b2t25", tmp_path / "runs" / name)
    (tmp_path / "corpus.txt").write_text("\n".join(SENTENCES) + "\n")
    build_lm(tmp_path / "corpus.txt", 2, tmp_path / "lm.arpa")
    save_tiny_lm(tmp_path / "path/to/llm", {w for s in SENTENCES for w in s.split()})
    rng = np.random.default_rng(0)

    def log_softmax(a):
        return a - np.logaddexp.reduce(a, axis=-1, keepdims=True)

    ns = {
        "torch": torch, "np": np,
        "x": torch.randn(B, T, C), "day_idx": torch.tensor([0, 2, 1]), "lengths": torch.tensor([T, 50, 40]),
        "targets": [[7, 3, 40], [20, 40], [1, 2, 3, 40]], "step": 5,
        "day": 1, "source": [rng.standard_normal((n, C)).astype(np.float32) for n in (5, 0, 17, 30)],
        "lp_a": [log_softmax(rng.standard_normal((n, 41))).astype(np.float32) for n in (7, 4)],
        "lp_b": [log_softmax(rng.standard_normal((n, 41))).astype(np.float32) for n in (7, 4)],
        "references": trainer.val_split.transcriptions,
    }
    ns["tm"], ns["fm"] = _masks(B, T, C, ns["lengths"])
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i}", "exec"), ns)
    assert (tmp_path / "submission.csv").read_text() == "id,text\n0,hello world\n1,how are you\n"
    assert isinstance(ns["per"], float) and ns["n_phonemes"] == 9


def _masks(B, T, C, lengths):
    from fastdecoder.ops import sample_masks

    return sample_masks(B, T, C, lengths=lengths, time_prob=0.5, time_max_width=5, time_max_count=2,
                        freq_prob=0.5, freq_max_width=2, freq_max_count=1)
