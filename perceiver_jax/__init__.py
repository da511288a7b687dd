"""perceiver_jax: the Perceiver (Jaegle et al., ICML 2021) in JAX and Haiku."""

from perceiver_jax.attention import (
  CrossAttentionBlock,
  MultiHeadAttention,
  SelfAttentionBlock,
  dot_product_attention,
)
from perceiver_jax.models import make_model
from perceiver_jax.perceiver import Perceiver
from perceiver_jax.position_encoding import LearnedPositionEncoding, fourier_features, grid_positions
from perceiver_jax.preprocess import ImageFrontEnd

__all__ = [
  "CrossAttentionBlock",
  "ImageFrontEnd",
  "LearnedPositionEncoding",
  "MultiHeadAttention",
  "Perceiver",
  "SelfAttentionBlock",
  "dot_product_attention",
  "fourier_features",
  "grid_positions",
  "make_model",
]
