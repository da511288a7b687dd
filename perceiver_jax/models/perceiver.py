"""The Perceiver (Jaegle et al., ICML 2021): a latent array that reads its inputs by cross-attention.

Axes: B batch, M input tokens, C input channels, N latents, D latent channels, K cross-attends,
R latent Transformers (repeats), L self-attention blocks per latent Transformer.

The latent Transformer runs R times (8 in the paper, 48 self-attention blocks in all) whatever K is;
the K cross-attends are interleaved evenly before every (R / K)-th of them, or all put at the start
(`cross_attend_layout="start"`). This keeps the paper's ablation FLOPs: K = 1, 2, 4, 8 give 404.3,
447.6, 534.1 and 707.2 GFLOPs at 224x224.

Weight sharing as in the paper: the first cross-attend has its own weights, cross-attends 2..K share
one set, and all K latent Transformers share one set. `share_cross_attends=False` and
`share_latent_transformers=False` give every repeat its own weights.

Speed and memory switches (docs/performance.md); none changes the function or the parameters:
- `attention_impl`: 'xla' (fused softmax with its own backward), 'jax' (`jax.nn.dot_product_attention`:
  cuDNN where it can) or 'cudnn' (forced).
- `cross_attention_chunk_size`: cross-attention over the M inputs in chunks of this many (exact online
  softmax), so its memory is O(N x chunk) rather than O(N x M); None: unchunked.
- `fold_cross_projections`: fold the cross-attends' key/value projections into the queries (see
  attention.py); None: where it saves FLOPs (one head). Otherwise the keys and values of the shared
  cross-attends are computed once. Inputs are normalised once for all cross-attends either way.
- `scan_repeats`: the repeats run under `hk.scan`, each step with the weights of its repeat (one set where
  they are shared, else a slice of the repeats' weights stacked), so each distinct block is compiled once
  rather than once per repeat, whether the weights are shared or not (`_scan_run`).
- `scan_blocks`: the L blocks of a latent Transformer run as a scan over their weights stacked, compiled
  once rather than L times. Parameters stay one set per block, under the same names and with the same
  initial values: checkpoints and LAMB's per-tensor trust ratios are those of the unrolled model. With both,
  the paper model's train step compiles for a v5e chip in 0.61-0.62 of the time (docs/performance.md).
- `remat`: every block is rematerialised in the backward pass (`hk.remat`): with `scan_repeats`, memory
  no longer grows with depth beyond the [B, N, D] latents between blocks.

The head (`head`): 'mean_pool' (the paper's: the mean of the latents, then the class projection) or
'decoder' (Perceiver IO's classification decoder): a learned query [1, D] cross-attends to the latents
(`decoder_num_heads` heads, q/k/v at D channels, pre-LayerNorm on both sides, the query residual unless
`decoder_query_residual=False`), an MLP with its residual, then the class projection. Either way the class
projection is `classifier` and starts at zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver_jax.models.attention import CrossAttentionBlock, SelfAttentionBlock
from perceiver_jax.models.attention_kernels import ATTENTION_IMPLS, varying_like
from perceiver_jax.models.checks import check_positive
from perceiver_jax.models.dense import normalize

LAYOUTS = ("interleaved", "start")
HEADS = ("mean_pool", "decoder")


class Perceiver(hk.Module):
  """Tokens [B, M, C] -> logits [B, num_classes]."""

  def __init__(
    self,
    num_classes: int,
    num_latents: int = 512,
    latent_channels: int = 1024,
    num_cross_attends: int = 8,
    num_latent_transformers: int = 8,
    num_self_attends_per_block: int = 6,
    num_cross_heads: int = 1,
    num_self_heads: int = 8,
    cross_qk_channels: int | None = None,
    widening_factor: int = 1,
    dropout_rate: float = 0.0,
    share_cross_attends: bool = True,
    share_latent_transformers: bool = True,
    cross_attend_layout: str = "interleaved",
    attention_impl: str = "xla",
    cross_attention_chunk_size: int | None = None,
    fold_cross_projections: bool | None = None,
    scan_repeats: bool = True,
    scan_blocks: bool = False,
    remat: bool = False,
    head: str = "mean_pool",
    decoder_num_heads: int = 1,
    decoder_query_residual: bool = True,
    name: str | None = None,
  ):
    """See the module docstring; `cross_qk_channels=None` uses the input's channels (the paper's)."""
    super().__init__(name=name)
    check_positive(
      num_classes=num_classes,
      num_latents=num_latents,
      latent_channels=latent_channels,
      num_cross_attends=num_cross_attends,
      num_latent_transformers=num_latent_transformers,
      num_cross_heads=num_cross_heads,
      num_self_heads=num_self_heads,
      widening_factor=widening_factor,
    )
    if num_self_attends_per_block < 0:
      raise ValueError(f"num_self_attends_per_block={num_self_attends_per_block} must be >= 0.")
    if latent_channels % num_self_heads:
      raise ValueError(f"num_self_heads={num_self_heads} does not divide latent_channels={latent_channels}.")
    if cross_qk_channels is not None:
      check_positive(cross_qk_channels=cross_qk_channels)
      if cross_qk_channels % num_cross_heads:
        raise ValueError(
          f"num_cross_heads={num_cross_heads} does not divide cross_qk_channels={cross_qk_channels}."
        )
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f"dropout_rate={dropout_rate} must be in [0, 1).")
    if cross_attend_layout not in LAYOUTS:
      raise ValueError(f"cross_attend_layout={cross_attend_layout!r} must be one of {LAYOUTS}.")
    if cross_attend_layout == "interleaved" and num_latent_transformers % num_cross_attends:
      raise ValueError(
        f"num_cross_attends={num_cross_attends} must divide num_latent_transformers="
        f"{num_latent_transformers} to interleave them evenly (or use cross_attend_layout='start')."
      )
    if attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={attention_impl!r} must be one of {ATTENTION_IMPLS}.")
    if head not in HEADS:
      raise ValueError(f"head={head!r} must be one of {HEADS}.")
    check_positive(decoder_num_heads=decoder_num_heads)
    if head == "decoder" and latent_channels % decoder_num_heads:
      raise ValueError(
        f"decoder_num_heads={decoder_num_heads} does not divide latent_channels={latent_channels}."
      )
    if cross_attention_chunk_size is not None:
      check_positive(cross_attention_chunk_size=cross_attention_chunk_size)
      if attention_impl != "xla":
        raise ValueError(
          f"cross_attention_chunk_size={cross_attention_chunk_size} needs attention_impl='xla', "
          f"not {attention_impl!r}."
        )
    self.num_classes = num_classes
    self.num_latents = num_latents
    self.latent_channels = latent_channels
    self.num_cross_attends = num_cross_attends
    self.num_latent_transformers = num_latent_transformers
    self.num_self_attends_per_block = num_self_attends_per_block
    self.num_cross_heads = num_cross_heads
    self.num_self_heads = num_self_heads
    self.cross_qk_channels = cross_qk_channels
    self.widening_factor = widening_factor
    self.dropout_rate = dropout_rate
    self.share_cross_attends = share_cross_attends
    self.share_latent_transformers = share_latent_transformers
    self.cross_attend_layout = cross_attend_layout
    self.attention_impl = attention_impl
    self.cross_attention_chunk_size = cross_attention_chunk_size
    self.fold_cross_projections = fold_cross_projections
    self.scan_repeats = scan_repeats
    self.scan_blocks = scan_blocks
    self.remat = remat
    self.head = head
    self.decoder_num_heads = decoder_num_heads
    self.decoder_query_residual = decoder_query_residual

  def _cross_attend(self, name: str) -> CrossAttentionBlock:
    return CrossAttentionBlock(
      num_heads=self.num_cross_heads,
      qk_channels=self.cross_qk_channels,
      widening_factor=self.widening_factor,
      dropout_rate=self.dropout_rate,
      attention_impl=self.attention_impl,
      chunk_size=self.cross_attention_chunk_size,
      fold_projections=self.fold_cross_projections,
      name=name,
    )

  def _latent_transformer(self, name: str) -> list[SelfAttentionBlock]:
    return [
      SelfAttentionBlock(
        num_heads=self.num_self_heads,
        widening_factor=self.widening_factor,
        dropout_rate=self.dropout_rate,
        attention_impl=self.attention_impl,
        name=f"{name}_block_{j}",
      )
      for j in range(self.num_self_attends_per_block)
    ]

  def __call__(self, tokens, *, input_mask=None, is_training: bool, return_attention: bool = False):
    """tokens [B, M, C], input_mask bool [B, M] (True = real token) -> logits [B, num_classes].

    With `return_attention`, returns (logits, weights): weights[i] are the i-th cross-attend's attention
    weights [B, heads, N, M] over the tokens in the order given. When not asked, nothing extra is kept.
    """
    if tokens.ndim != 3:
      raise ValueError(f"Perceiver takes tokens [B, M, C]; got shape {tokens.shape}.")
    cross_attends, transformers = _modules(self)

    init = hk.initializers.TruncatedNormal(stddev=0.02)
    latents = hk.get_parameter("latents", [self.num_latents, self.latent_channels], init=init)
    latents = jnp.broadcast_to(latents.astype(tokens.dtype), (tokens.shape[0], *latents.shape))  # [B, N, D]
    # Under shard_map the latents, read from a replicated parameter, vary over the devices as the tokens do
    # once they have read them; the scan over the repeats carries them, and a carry says so from the start.
    latents = varying_like(latents, tokens)

    # Every cross-attend normalises the same tokens: once here. The blocks fold their LayerNorm's scale
    # and offset into their projections.
    tokens = normalize(tokens)  # [B, M, C]
    memories = _shared_memories(cross_attends, tokens, self.num_latents)

    def checkpointed(fn):
      return hk.remat(fn) if self.remat else fn

    def cross(block, x):  # [B, N, D] -> ([B, N, D], weights [B, H, N, M] or None)
      def apply(x):
        out = block(
          x,
          tokens,
          input_mask=input_mask,
          is_training=is_training,
          return_weights=return_attention,
          normalized=True,
          memory=memories.get(id(block)),
        )
        return out if return_attention else (out, None)

      return checkpointed(apply)(x)

    def transformer(blocks, x, params=None):
      """One latent Transformer; `params`: its blocks' weights stacked ([L, ...], `stacked_parameters`) for
      `blocks` to read instead of their own, or None."""
      call = lambda block, y: checkpointed(lambda z: block(z, is_training=is_training))(y)
      if params is None and self.scan_blocks and len(blocks) > 1 and not hk.running_init():
        params = stacked_parameters(blocks)
      if params is None:
        for block in blocks:
          x = call(block, x)
        return x
      if self.scan_blocks and len(blocks) > 1:

        def step(y, block_params):
          with parameters_from(blocks[0], block_params):
            return call(blocks[0], y), None

        return hk.scan(step, x, params)[0]
      for j, block in enumerate(blocks):
        with parameters_from(block, _select(params, j)):
          x = call(block, x)
      return x

    segments = _segments(self.cross_attend_layout, self.num_cross_attends, self.num_latent_transformers)
    ops = (cross_attends, transformers, cross, transformer)
    if self.scan_repeats and not hk.running_init():
      latents, weights = _run_scanned(segments, latents, ops, bool(memories), self.scan_blocks)
    else:
      latents, weights = _run_unrolled(segments, latents, ops)

    if self.head == "decoder":
      pooled = self._decode(latents, is_training=is_training)  # [B, D]
    else:
      # The mean over N in float32 whatever the compute dtype.
      pooled = jnp.mean(latents.astype(jnp.float32), axis=1).astype(latents.dtype)  # [B, D]
    # Zero-initialised as in the official code: a random head at a high learning rate can blow up.
    logits = hk.Linear(self.num_classes, w_init=hk.initializers.Constant(0.0), name="classifier")(pooled)
    return (logits, weights) if return_attention else logits

  def _decode(self, latents, *, is_training: bool):
    """Perceiver IO's classification decoder: latents [B, N, D] -> [B, D], read by one learned query."""
    b, _, d = latents.shape
    init = hk.initializers.TruncatedNormal(stddev=0.02)
    query = hk.get_parameter("decoder_query", [1, d], init=init).astype(latents.dtype)
    query = varying_like(jnp.broadcast_to(query, (b, 1, d)), latents)  # [B, 1, D]
    decoder = CrossAttentionBlock(
      num_heads=self.decoder_num_heads,
      widening_factor=self.widening_factor,
      dropout_rate=self.dropout_rate,
      attention_impl=self.attention_impl,
      query_residual=self.decoder_query_residual,
      name="decoder",
    )
    return decoder(query, latents, is_training=is_training)[:, 0]  # [B, D]


# The parts of `Perceiver.__call__`: functions, not methods, as `_scan_run` (a mixed-precision policy would
# cast a method's outputs); they run inside the Perceiver's call, so in its name scope.


def _modules(perceiver: Perceiver) -> tuple[list[CrossAttentionBlock], list[list[SelfAttentionBlock]]]:
  """The cross-attends [num_cross_attends] and latent Transformers [num_latent_transformers] in run order.

  Module instances are the unit of weight sharing in Haiku: calling one twice reuses its weights.
  """
  k, r = perceiver.num_cross_attends, perceiver.num_latent_transformers
  if perceiver.share_cross_attends:
    shared = perceiver._cross_attend("cross_attend_shared") if k > 1 else None
    cross_attends = [perceiver._cross_attend("cross_attend_0")] + [shared] * (k - 1)
  else:
    cross_attends = [perceiver._cross_attend(f"cross_attend_{i}") for i in range(k)]
  if perceiver.share_latent_transformers:
    transformers = [perceiver._latent_transformer("latent_transformer")] * r
  else:
    transformers = [perceiver._latent_transformer(f"latent_transformer_{i}") for i in range(r)]
  return cross_attends, transformers


def _shared_memories(cross_attends, tokens, num_latents: int) -> dict:
  """{id(block): its keys and values} of each weight-shared cross-attend, from normalised tokens [B, M, C].

  Keys and values of a weight-shared cross-attend are the same every time it runs: computed once.
  (None where the projections fold into the queries: then there are none to keep.)
  """
  memories = {}
  for block in cross_attends:
    if cross_attends.count(block) > 1 and id(block) not in memories:
      memories[id(block)] = block.memory(tokens, num_queries=num_latents, normalized=True)
  return {key: memory for key, memory in memories.items() if memory is not None}


def _segments(layout: str, k: int, r: int) -> list[list[tuple[str, int]]]:
  """The order the blocks run in, in segments: [("cross", i), ("latent", j), ...] (cross-attend i, latent
  Transformer j)."""
  if layout == "interleaved":
    every = r // k
    return [[("cross", i)] + [("latent", i * every + t) for t in range(every)] for i in range(k)]
  return [[("cross", i)] for i in range(k)] + [[("latent", j)] for j in range(r)]


def _run_scanned(segments, latents, ops, memories: bool, scan_blocks: bool):
  """Runs of segments alike in structure, each one scan (`_scan_run`) -> (latents, cross-attend weights).

  `ops`: (cross_attends, transformers, cross, transformer). The shared cross-attend's keys and values
  (several heads, not folded: `memories`) are computed once, the unshared first one's in its own run: they
  do not mix in one scan.
  """
  cross_attends, transformers, cross, transformer = ops
  runs = []
  for segment in segments[1:] if memories else segments:
    if runs and [kind for kind, _ in runs[-1][0]] == [kind for kind, _ in segment]:
      runs[-1].append(segment)
    else:
      runs.append([segment])
  runs = [[segments[0]]] + runs if memories else runs
  weights = []
  for run in runs:
    latents, outs = _scan_run(run, latents, cross_attends, transformers, cross, transformer, scan_blocks)
    weights += outs
  return latents, weights


def _run_unrolled(segments, latents, ops):
  """The segments one after the other -> (latents, cross-attend weights); `ops` as `_run_scanned`'s.

  At init every module runs once, at its first use: that creates every parameter, in the order (and so
  with the initial values) of the whole model's run.
  """
  cross_attends, transformers, cross, transformer = ops
  weights, seen = [], set()
  for kind, i in (op for segment in segments for op in segment):
    module = cross_attends[i] if kind == "cross" else transformers[i]
    if hk.running_init() and id(module) in seen:
      weights += [None] if kind == "cross" else []
      continue
    seen.add(id(module))
    if kind == "cross":
      latents, out = cross(module, latents)
      weights.append(out)
    else:
      latents = transformer(module, latents)
  return latents, weights


def _scan_run(run, latents, cross_attends, transformers, cross, transformer, scan_blocks: bool):
  """`run`'s segments (alike in structure) as one `hk.scan` -> (latents, the cross-attends' weights).

  A function, not a method of `Perceiver`: a mixed-precision policy would cast a method's outputs to its
  output dtype.

  The scan's step runs the first segment's modules with the weights of the segment at hand: their own
  where every segment uses the same module (weight sharing), else a slice of the segments' weights
  stacked (`stacked_parameters`). Each block is so compiled once, whether the repeats share weights or not.
  """
  kinds = [kind for kind, _ in run[0]]
  ops = {"cross": cross_attends, "latent": transformers}
  # Per position in a segment: the distinct modules there (first-use order), their weights stacked when
  # they differ, and which of them each segment uses.
  slots = []
  for p, kind in enumerate(kinds):
    used = [ops[kind][seg[p][1]] for seg in run]
    distinct = list({id(m): m for m in used}.values())
    stack, index = None, None
    if len(distinct) > 1:
      index = jnp.array([[id(m) for m in distinct].index(id(m)) for m in used], jnp.int32)
      # A latent Transformer is a list of blocks: its weights stack to [repeats, L, ...].
      stack = (
        stacked_parameters(distinct)
        if kind == "cross"
        else _stack([stacked_parameters(blocks) for blocks in distinct])
      )
    elif kind == "latent" and scan_blocks and len(distinct[0]) > 1:
      stack = stacked_parameters(distinct[0])  # Stacked once, outside the scan.
    slots.append((kind, distinct[0], stack, index))

  def step(x, n):
    outs = None
    for kind, module, stack, index in slots:
      chosen = stack if index is None else _select(stack, index[n])
      if kind == "latent":
        x = transformer(module, x, chosen)
        continue
      with contextlib.nullcontext() if chosen is None else parameters_from(module, chosen):
        x, outs = cross(module, x)
    return x, outs

  if len(run) == 1:
    latents, out = step(latents, 0)
    return latents, [out] if "cross" in kinds else []
  latents, outs = hk.scan(step, latents, jnp.arange(len(run)))
  if "cross" not in kinds:
    return latents, []
  return latents, [None] * len(run) if outs is None else list(outs)


def _own(module: hk.Module, module_name: str) -> bool:
  return module_name == module.module_name or module_name.startswith(module.module_name + "/")


def _select(tree, i):
  return jax.tree.map(lambda p: p[i], tree)


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *ps: jnp.stack(ps), *trees)


def stacked_parameters(modules: Sequence[hk.Module]) -> dict:
  """The parameters of `modules` (alike in structure) stacked on a new leading axis, keyed by their names
  relative to their module; for `parameters_from`. Apply time only: they must exist."""
  per_module = [
    {name[len(m.module_name) :]: p for name, p in hk.get_params().items() if _own(m, name)} for m in modules
  ]
  return _stack(per_module)


@contextlib.contextmanager
def parameters_from(module: hk.Module, params: dict) -> Iterator[None]:
  """Within: `module` and its submodules read their parameters from `params` (one slice of
  `stacked_parameters`) instead of their own."""

  def getter(next_getter, value, context):
    if _own(module, context.module_name):
      # In the dtype the getters before this one gave (the mixed-precision policy's compute dtype).
      value = params[context.module_name[len(module.module_name) :]][context.name].astype(value.dtype)
    return next_getter(value)

  with hk.custom_getter(getter):
    yield
