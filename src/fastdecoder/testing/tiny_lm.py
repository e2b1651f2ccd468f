"""A tiny randomly initialised causal LM (GPT-2 architecture) with a word-level tokenizer, built and saved locally
(no download), for the rescoring tests and benchmark."""
from __future__ import annotations

from pathlib import Path

SPECIALS = ["<|endoftext|>", "<unk>", "<pad>"]


def save_tiny_lm(path: Path, vocabulary, *, seed: int = 0, n_layer: int = 1, n_embd: int = 32,
                 n_positions: int = 64) -> Path:
    """Write a GPT-2 of ``n_layer`` layers and a whitespace word-level tokenizer over ``vocabulary`` to ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(vocabulary) - set(SPECIALS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=2,
                     bos_token_id=0, eos_token_id=0, pad_token_id=2)
    model = GPT2LMHeadModel(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def train_on(path: Path, sentence: str, *, steps: int = 40, lr: float = 0.05) -> None:
    """Fit the saved LM at ``path`` to prefer ``sentence`` (a few Adam steps), then save it back."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([[tok.bos_token_id] + tok(sentence, add_special_tokens=False)["input_ids"]])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(path)
