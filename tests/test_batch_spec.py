"""The batch spec (data/spec.py) and the doors it opens: every source yields it, the tools read it, inputs
of several modalities go through one multimodal front end, and a multi-label task is trained and scored
with the mAP of the whole eval split."""

import json
import shutil

import haiku as hk
import jax
import ml_collections
import numpy as np
import pytest
from conftest import TINY

from perceiver_jax import data
from perceiver_jax.data import spec, synthetic
from perceiver_jax.tools import benchmark, compile_tpu, flops
from perceiver_jax.training import build, parallel, tasks, train

K = 5  # Classes of the toy configs.


def toy_config(config_loader, task="multi_label"):
  """A tiny Perceiver on two synthetic modalities: `seq` [6, 3] with a mask, `img` [4, 4, 2] without."""
  config = config_loader("digits", "runlocal")
  config.task = task
  config.dataset = ml_collections.ConfigDict(
    dict(
      name="synthetic",
      inputs=dict(
        seq=dict(shape=(6, 3), dtype="float32", masked=True),
        img=dict(shape=(4, 4, 2), dtype="float32", masked=False),
      ),
      num_classes=K,
      num_train_examples=64,
      num_eval_examples=20,  # Not a multiple of the eval batch: the last batch is padded.
    )
  )
  config.input = ml_collections.ConfigDict(
    dict(
      front_end="multimodal",
      min_padding_size=2,
      modalities=dict(
        seq=dict(front_end="sequence", num_bands=2),
        img=dict(front_end="image", num_bands=2, max_resolution=4),
      ),
    )
  )
  config.model.update(
    num_classes=K, num_latents=8, latent_channels=16, num_cross_attends=1, num_latent_transformers=1
  )
  config.model.update(num_self_attends_per_block=1, num_self_heads=2)
  config.train.update(global_batch_size=8, eval_batch_size=8, num_steps=12, log_every=4, eval_every=12)
  config.optimizer.warmup_steps = 2
  config.checkpoint.update(every=4, keep=3)
  return config


def test_the_spec_says_the_label_form_masks_and_eval_mask(config_loader):
  imagenet = config_loader("imagenet")  # MixUp and CutMix on: soft train labels, class indices in eval.
  train_spec, eval_spec = spec.batch_spec(imagenet, 16, "train"), spec.batch_spec(imagenet, 16, "eval")
  assert train_spec["inputs"].shape == (16, 224, 224, 3) and train_spec["label"].shape == (16, 1000)
  assert train_spec["label"].dtype == np.float32 and "eval_mask" not in train_spec
  assert eval_spec["label"].shape == (16,) and eval_spec["label"].dtype == np.int32
  assert eval_spec["eval_mask"].dtype == np.bool_ and "input_mask" not in eval_spec
  digits = config_loader("digits")
  assert spec.batch_spec(digits, 3)["label"].dtype == np.int32  # No mixing: class indices.

  toy = spec.batch_spec(toy_config(config_loader), 7, "eval")
  assert {k: v.shape for k, v in toy["inputs"].items()} == {"seq": (7, 6, 3), "img": (7, 4, 4, 2)}
  assert {k: v.shape for k, v in toy["input_mask"].items()} == {"seq": (7, 6)}  # The masked one only.
  assert toy["label"].shape == (7, K) and toy["label"].dtype == np.float32  # Multi-hot, in eval too.


def test_every_source_yields_its_spec_and_check_batch_sees_a_wrong_one(config_loader):
  digits = config_loader("digits")
  local = digits.train.global_batch_size // jax.process_count()
  spec.check_batch(next(data.train_batches(digits)), spec.batch_spec(digits, local))
  spec.check_batch(
    next(data.eval_batches(digits)), spec.batch_spec(digits, digits.train.eval_batch_size, "eval")
  )
  for config in (config_loader("benchmark", "runlocal"), toy_config(config_loader)):
    spec.check_batch(next(data.train_batches(config)), spec.batch_spec(config, 8))
    spec.check_batch(next(data.eval_batches(config)), spec.batch_spec(config, 8, "eval"))
  wrong = dict(next(data.train_batches(digits)), label=np.zeros((local, 10), np.float32))
  with pytest.raises(ValueError, match=r"label is float32\[64, 10\], the spec's int32\[64\]"):
    spec.check_batch(wrong, spec.batch_spec(digits, local))


def test_synthetic_batches_are_per_step_per_process_and_count_eval_examples_once(config_loader, monkeypatch):
  config = toy_config(config_loader)
  one = [next(synthetic.train_batches(config, start_step=s)) for s in (0, 1)]
  assert not np.array_equal(one[0]["inputs"]["img"], one[1]["inputs"]["img"])
  resumed = next(synthetic.train_batches(config, start_step=1))
  jax.tree.map(np.testing.assert_array_equal, resumed, one[1])
  shares = []
  for process in range(2):  # Two processes' shares of a step are the one-process batch, split.
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda p=process: p)
    shares.append(next(synthetic.train_batches(config)))
  jax.tree.map(lambda a, b, c: np.testing.assert_array_equal(np.concatenate([b, c]), a), one[0], *shares)
  monkeypatch.undo()
  evals = list(synthetic.eval_batches(config))
  assert len(evals) == 3 and sum(int(b["eval_mask"].sum()) for b in evals) == 20
  mask = one[0]["input_mask"]["seq"]
  assert mask[:, 0].all() and not mask.all()  # Real prefixes of random lengths.
  assert one[0]["label"].sum(1).min() >= 1  # At least one class per example.


def test_the_tools_read_the_spec_masks_included(config_loader):
  config = toy_config(config_loader, task="single_label")
  batch = benchmark.synthetic_batch(config, 8)
  spec.check_batch(batch, spec.batch_spec(config, 8))
  trainer = train.Trainer(compile_tpu.step_config(config, 8), total_steps=10)
  _, train_batch, eval_batch, _ = compile_tpu.abstract_inputs(trainer, 8)
  for split, laid_out in (("train", train_batch), ("eval", eval_batch)):
    want = spec.batch_spec(config, 8, split)
    spec.check_batch(laid_out, want)
    assert all(x.sharding == parallel.batch_sharded(trainer.mesh) for x in jax.tree.leaves(laid_out))
  # The multimodal front end's tokens: 6 + 16 tokens, padded to the widest (3 + 5 or 2 + 10) plus 2.
  assert build.token_shape(config) == (22, 14)
  assert flops.model_stats(config)["gflops"] * 1e9 == flops.perceiver_forward_flops(config.model, 22, 14)


def test_multimodal_tokens_are_each_modality_padded_with_its_embedding(config_loader):
  config = toy_config(config_loader)
  model = build.make_model(config)
  batch = synthetic.make_batch(config, "train", range(3))
  params, state = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, is_training=True))(batch["inputs"])
  f = hk.transform(lambda x, m: build.front_end(config)(x, input_mask=m))
  tokens, mask = jax.jit(f.apply)(params, None, batch["inputs"], batch["input_mask"])
  embedding = params["front_end"]
  # Sorted order: img (16 tokens of 2 + 10 channels) then seq (6 tokens of 3 + 5), padded to 14.
  np.testing.assert_array_equal(tokens[:, :16, 12:], np.broadcast_to(embedding["img_embedding"], (3, 16, 2)))
  np.testing.assert_array_equal(tokens[:, 16:, 8:], np.broadcast_to(embedding["seq_embedding"], (3, 6, 6)))
  np.testing.assert_array_equal(tokens[:, :16, :2], batch["inputs"]["img"].reshape(3, 16, 2))
  np.testing.assert_array_equal(tokens[:, 16:, :3], batch["inputs"]["seq"])
  np.testing.assert_array_equal(mask, np.concatenate([np.ones((3, 16), bool), batch["input_mask"]["seq"]], 1))

  # Padding of the masked modality does not reach the logits.
  @jax.jit
  def logits(x):
    return model.apply(params, state, None, x, is_training=False, input_mask=batch["input_mask"])[0]

  refilled = dict(
    batch["inputs"], seq=np.where(batch["input_mask"]["seq"][..., None], batch["inputs"]["seq"], 9.0)
  )
  np.testing.assert_allclose(logits(refilled), logits(batch["inputs"]), rtol=1e-5, atol=1e-5)


def _average_precision(scores, positives):
  """Precision at the rank of each positive, averaged (no ties): the textbook definition."""
  order = np.argsort(-scores)
  hits = positives[order]
  precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
  return float(precision[hits].mean())


def test_map_is_the_mean_over_classes_with_a_positive_of_each_column():
  rng = np.random.default_rng(0)
  scores = rng.random((40, 6))
  labels = (rng.random((40, 6)) < 0.3).astype(np.float32)
  labels[:, 2] = 0  # A class with no positive: left out of the mean.
  labels[:3, 4] = 1
  want = [_average_precision(scores[:, k], labels[:, k] > 0) for k in (0, 1, 3, 4, 5)]
  aps = tasks.average_precisions(scores, labels)
  assert aps[2] is None
  np.testing.assert_allclose([aps[k] for k in (0, 1, 3, 4, 5)], want, rtol=1e-12)
  assert tasks.mean_average_precision(scores, labels) == pytest.approx(np.mean(want), rel=1e-12)
  from sklearn.metrics import average_precision_score  # Its macro mean over the classes with a positive.

  kept = labels.sum(0) > 0
  sklearn_map = average_precision_score(labels[:, kept], scores[:, kept], average="macro")
  assert tasks.mean_average_precision(scores, labels) == pytest.approx(sklearn_map, rel=1e-12)
  summary = tasks.summarize(tasks.MULTI_LABEL, {"count": 40, "loss": 0.0}, scores, labels)  # The trainer's.
  assert summary["mAP"] == pytest.approx(sklearn_map, rel=1e-12) and summary["per_class_ap"] == aps
  with pytest.raises(ValueError, match="must both be"):
    tasks.average_precisions(scores.T, labels)  # The paper's first version's mistake cannot pass silently.


def test_single_label_predictions_are_every_eval_example_once(config_loader):
  config = config_loader("digits", TINY)
  trainer = train.Trainer(config, total_steps=10)
  predictions = {}
  metrics = trainer.evaluate(trainer.init(), predictions)
  assert predictions["scores"].shape == (359, 10) and predictions["labels"].shape == (359,)
  top1 = np.mean(predictions["scores"].argmax(1) == predictions["labels"])
  assert metrics["top1"] == pytest.approx(top1)
  np.testing.assert_allclose(predictions["scores"].sum(1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_two_modalities_multi_label_train_resume_and_evaluate(config_loader, tmp_path, monkeypatch):
  config, workdir = toy_config(config_loader), tmp_path / "run"
  whole = train.train_and_evaluate(config, str(workdir), tensorboard=False)
  assert whole["eval"]["count"] == 20 and len(whole["eval"]["per_class_ap"]) == K
  stored = json.loads((workdir / "results.json").read_text())
  assert stored["eval"]["mAP"] == whole["eval"]["mAP"] and "top1" not in stored["eval"]
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("eval_mAP" in m for m in logged) and any("examples_per_s" in m for m in logged)

  # Resumed from the checkpoint of step 8 (the last one gone), the run ends exactly where it ended.
  shutil.rmtree(workdir / "checkpoints" / "12")
  monkeypatch.setattr(train.Trainer, "init", lambda self: pytest.fail("started afresh, not resumed"))
  resumed = train.train_and_evaluate(config, str(workdir), tensorboard=False)
  assert resumed["params_checksum"] == whole["params_checksum"]

  evaluated = train.evaluate_run(str(workdir), {"train.eval_batch_size": 16}, save_predictions=True)
  saved = np.load(workdir / train.PREDICTIONS)
  assert saved["scores"].shape == (20, K) and saved["labels"].shape == (20, K)
  want = tasks.mean_average_precision(saved["scores"], saved["labels"])
  assert evaluated["eval"]["mAP"] == pytest.approx(want)
  assert evaluated["eval"]["mAP"] == pytest.approx(whole["eval"]["mAP"], rel=1e-5)  # Another batch size.
  with pytest.raises(ValueError, match="--config.model.num_latents would change the model"):
    train.evaluate_run(str(workdir), {"model.num_latents": 4})


def test_compile_tpu_gives_the_eval_step_as_many_forward_passes_per_device_as_the_train_step(config_loader):
  config = toy_config(config_loader, task="single_label")
  assert compile_tpu.eval_batch_size(config, 64, 8) == 64  # One window: the train batch.
  with config.unlocked():
    config.dataset.eval_windows = 4
  assert compile_tpu.eval_batch_size(config, 64, 8) == 16  # 16 examples of 4 windows: 64 passes.
  config.dataset.eval_windows = 16
  assert compile_tpu.eval_batch_size(config, 64, 8) == 8  # At least one example per device.
  stepped = compile_tpu.step_config(config, 64, 8)
  assert (stepped.train.global_batch_size, stepped.train.eval_batch_size) == (64, 8)
