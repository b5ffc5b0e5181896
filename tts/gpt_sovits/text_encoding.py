"""SoVITS' text encoder, run once per streamed sentence instead of once per chunk.

Every streamed chunk is vocoded by `vq_model.decode(..., stream_mode=True)`, which re-encodes the
sentence's phonemes (6 attention layers; ~12 ms on a real-size voice on 2 cores, of a chunk's
~70 ms fixed cost) although they are the same at every chunk. While a sentence's chunk is decoded,
its `TextEncodedOnce` stands in for the model's `enc_p.encoder_text`: the first call encodes, the
later ones return that encoding, so the samples are the same as without it.
"""

from __future__ import annotations

from typing import Any

import torch


class TextEncodedOnce(torch.nn.Module):
    """One sentence's text encoding: `encoder`'s output for its phonemes, computed at the first call."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoded: torch.Tensor | None = None

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.encoded is None:
            self.encoded = self.encoder(text, mask)
        return self.encoded


def encoding_text_once(vq_model: Any, sentence_encoding: TextEncodedOnce | None) -> TextEncodedOnce:
    """Put the sentence's encoding (a new one if None) in place of `vq_model`'s text encoder;
    `restore_text_encoder` puts the encoder back."""
    encoding = sentence_encoding or TextEncodedOnce(vq_model.enc_p.encoder_text)
    vq_model.enc_p.encoder_text = encoding
    return encoding


def restore_text_encoder(vq_model: Any) -> None:
    encoder = vq_model.enc_p.encoder_text
    if isinstance(encoder, TextEncodedOnce):
        vq_model.enc_p.encoder_text = encoder.encoder
