"""Generate text from a char model in PyTorch (``rnnops sample``: a first look at a run)."""

from __future__ import annotations

import torch

from rnnops.errors import RnnopsError


@torch.no_grad()
def generate(
    model,
    vocab: list[str],
    prompt: str,
    n_chars: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int | None = None,
) -> str:
    """Prefill the prompt in one call, then sample ``n_chars`` one at a time with carried state."""
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted({c for c in prompt if c not in index})
    if unknown:
        raise RnnopsError(f"prompt has characters outside the model's vocabulary: {''.join(unknown)!r}")
    if not prompt:
        prompt = "\n" if "\n" in index else vocab[0]
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    model.eval()
    x = torch.tensor([[index[c] for c in prompt]])
    logits, state = model(x)
    out = []
    for _ in range(n_chars):
        last = logits[0, -1]
        if temperature <= 0:
            nxt = int(last.argmax())
        else:
            last = last / temperature
            if top_k:
                kth = torch.topk(last, min(top_k, last.numel())).values[-1]
                last = torch.where(last < kth, torch.full_like(last, float("-inf")), last)
            nxt = int(torch.multinomial(torch.softmax(last, -1), 1, generator=gen))
        out.append(vocab[nxt])
        logits, state = model(torch.tensor([[nxt]]), state)
    return "".join(out)
