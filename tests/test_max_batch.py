"""The largest-batch search of `compile_tpu --find_max_batch`, against memory curves with a known answer."""

import math

import numpy as np
import pytest

from perceiver_jax.tools import compile_tpu


def _search(memory, hbm, first, step=1, **kwargs):
  compiled = []

  def measure(batch):
    assert batch > 0 and batch % step == 0 and batch not in compiled  # Never the same compile twice.
    compiled.append(batch)
    return memory(batch) <= hbm, memory(batch)

  known = {first: (memory(first) <= hbm, memory(first))}
  best, no_fit, points = compile_tpu.search_max_batch(measure, known, hbm, step=step, **kwargs)
  assert sorted(points) == sorted([first, *compiled])
  return best, no_fit, len(points)


def _truth(memory, hbm, step=1):
  lo, hi = 0, 10**9  # Memory grows with the batch: bisect on the multiples of `step`.
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if memory(mid * step) <= hbm else (lo, mid)
  return lo * step


def _check_bracket(memory, hbm, best, no_fit, step=1, tolerance=0.05):
  assert best == 0 or memory(best) <= hbm
  assert no_fit is not None and memory(no_fit) > hbm
  assert no_fit <= max(best + step, math.ceil(best * (1 + tolerance) / step) * step)
  assert best <= _truth(memory, hbm, step) < no_fit


@pytest.mark.parametrize(
  "name, memory, hbm, first",
  [
    ("affine from below", lambda b: 7.0 + 0.25 * b, 17.2, 16),
    ("affine from a misfit", lambda b: 3.0 + 0.01 * b, 17.2, 2048),
    # Memory that grows more slowly than the line through the first two compiles (fixed costs that
    # amortise, rematerialisation kicking in): a search that stops at the first fit stops far short.
    ("sublinear", lambda b: 2.5 + 0.9 * b**0.7, 102.0, 16),
    ("superlinear", lambda b: 2.0 + 0.05 * b + 1e-4 * b**2, 34.4, 16),
  ],
)
def test_the_batch_found_fits_and_one_five_percent_larger_does_not(name, memory, hbm, first):
  best, no_fit, compiles = _search(memory, hbm, first)
  _check_bracket(memory, hbm, best, no_fit)
  assert compiles <= 8, name


def test_a_cliff_in_memory_is_bracketed():
  # The line through the first two compiles says 152; past 150 the program needs 30 GB more.
  def memory(b):
    return 2.0 + 0.1 * b + (30.0 if b > 150 else 0.0)

  best, no_fit, compiles = _search(memory, 17.2, 16)
  _check_bracket(memory, 17.2, best, no_fit)
  assert compiles <= 12
  best, no_fit, compiles = _search(memory, 17.2, 16, max_compiles=8)  # Cut short: close below the cliff.
  assert compiles == 8 and memory(best) <= 17.2 < memory(no_fit)
  assert 0.85 * 150 <= best <= 150 < no_fit < 152 * 1.05


@pytest.mark.parametrize("plateau", [1.1, 2.0, 3.0])
@pytest.mark.parametrize("slope, hbm", [(0.05, 34.4), (0.1, 102.0), (0.12, 102.0)])
def test_flat_memory_near_the_limit_is_bracketed_within_twelve_compiles(plateau, slope, hbm):
  # The TPU compiler rematerialises to fit: from the knee on, memory stays at 96-98% of HBM (wandering
  # as it did for resnet50 and vit_b16 on v4 and v5p) until, `plateau` times the knee, nothing fits.
  knee = (0.97 * hbm - 1.0) / slope
  limit = int(plateau * knee)

  def memory(b):
    if b <= limit:
      return min(1.0 + slope * b, hbm * (0.97 + 0.01 * math.sin(b)))
    return max(1.0 + slope * b, 1.05 * hbm)

  best, no_fit, compiles = _search(memory, hbm, 16)
  _check_bracket(memory, hbm, best, no_fit)
  assert best <= limit < no_fit and compiles <= 12


def test_random_curves_are_bracketed_within_eight_compiles():
  rng = np.random.default_rng(0)
  for _ in range(200):
    fixed, slope, power = rng.uniform(0.5, 12), rng.uniform(0.005, 0.5), rng.uniform(0.6, 1.4)
    hbm = float(rng.choice([17.2, 34.4, 102.0]))
    step = int(rng.choice([1, 2]))
    first = step * int(rng.integers(1, 64))

    def memory(b, fixed=fixed, slope=slope, power=power):
      return fixed + slope * b**power

    best, no_fit, compiles = _search(memory, hbm, first, step=step)
    _check_bracket(memory, hbm, best, no_fit, step)
    assert compiles <= 8


def test_nothing_fits_and_the_step_is_respected():
  best, no_fit, _ = _search(lambda b: 20.0 + b, 17.2, 64)
  assert (best, no_fit) == (0, 1)
  best, no_fit, _ = _search(lambda b: 1.0 + 0.3 * b, 17.2, 8, step=2)
  assert best % 2 == 0 and no_fit % 2 == 0
  _check_bracket(lambda b: 1.0 + 0.3 * b, 17.2, best, no_fit, step=2)


def test_a_budget_of_compiles_stops_the_search():
  best, no_fit, compiles = _search(lambda b: 1.0 + 0.001 * b**1.5, 102.0, 1, max_compiles=3)
  assert compiles == 3 and no_fit is None and best > 1
