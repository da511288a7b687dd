"""perceiver_jax: the Perceiver (Jaegle et al., ICML 2021) in JAX and Haiku."""

from perceiver_jax.front_ends.images import ImageFrontEnd
from perceiver_jax.models.attention import CrossAttentionBlock, MultiHeadAttention, SelfAttentionBlock
from perceiver_jax.models.attention_kernels import dot_product_attention
from perceiver_jax.models.perceiver import Perceiver
from perceiver_jax.models.position_encoding import LearnedPositionEncoding, fourier_features, grid_positions
from perceiver_jax.training.build import make_model

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
