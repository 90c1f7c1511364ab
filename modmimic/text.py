"""Text encoders for language-conditioned policies: an instruction becomes one embedding vector, computed once per
task string (robomimic v0.5: the ``text_embeds`` of CLIP's text tower with its projection).

``task.text_encoder.fn`` names any function ``fn(texts: list[str], **kwargs) -> [len(texts), D]`` (a dotted path,
resolved under the trust rules); :func:`clip_text_embeddings` is the default. Weights load only from a local
directory: nothing is downloaded at run time, and a hub name such as ``openai/clip-vit-base-patch32`` that is not
a directory here is refused. Make the directory once, where a network is available::

    from transformers import AutoTokenizer, CLIPTextModelWithProjection
    AutoTokenizer.from_pretrained("openai/clip-vit-base-patch32").save_pretrained("clip-text")
    CLIPTextModelWithProjection.from_pretrained("openai/clip-vit-base-patch32").save_pretrained("clip-text")

(``transformers`` is the ``lang`` extra: ``pip install "modmimic[lang]"``; it does not pull torch in.)
"""
from __future__ import annotations

import functools
import os

import numpy as np

from modmimic.config import ConfigError


def local_model_dir(path, what: str = "task.text_encoder.kwargs.path") -> str:
    """``path`` as an existing local directory, or a one-line :class:`ConfigError` (a hub name is not fetched)."""
    if path is None or str(path) == "":
        raise ConfigError(f"{what} is not set: language conditioning needs a local directory holding the text "
                          "encoder's weights and tokenizer (nothing is downloaded)")
    p = os.path.expanduser(str(path))
    if not os.path.isdir(p):
        raise ConfigError(f"{what}={path!r} is not a local directory: text encoders load only from local weights "
                          "(nothing is downloaded); save the model and tokenizer there with save_pretrained first")
    return p


@functools.lru_cache(maxsize=2)
def _load_clip_text(path: str):
    try:
        import transformers
    except ImportError as e:
        raise ConfigError(f"the CLIP text encoder needs transformers ({e}): pip install 'modmimic[lang]'") from None
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in training logs
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.CLIPTextModelWithProjection.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"cannot load a CLIP text model and tokenizer from {path}: "
                          f"{' '.join(str(e).split())[:300]}") from None
    return tok, model.eval()


def clip_text_embeddings(texts, path=None, batch_size: int = 64, normalize: bool = False) -> np.ndarray:
    """``[len(texts), D]`` float32: CLIP's projected text embeddings (``text_embeds``) of ``texts`` from the model in
    the local directory ``path``; ``normalize`` scales each to unit length (CLIP's similarity space)."""
    import torch

    tok, model = _load_clip_text(local_model_dir(path))
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, return_tensors="pt")
            e = model(input_ids=enc["input_ids"], attention_mask=enc.get("attention_mask")).text_embeds
            if normalize:
                e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            out.append(e.float().cpu().numpy())
    return np.concatenate(out, 0) if out else np.zeros((0, 0), np.float32)
