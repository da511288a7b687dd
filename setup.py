"""Install perceiver_jax: `pip install -e .` (runtime) or `pip install -e '.[test]'` (with test tools)."""

import setuptools

setuptools.setup(
  # The PyPI name `perceiver-jax` belongs to an unrelated project; the import name stays perceiver_jax.
  name="perceiver-haiku-reference",
  version="0.1.0",
  description="The Perceiver (Jaegle et al., ICML 2021) in JAX/Haiku: paper-exact, data-parallel.",
  packages=setuptools.find_packages(include=["perceiver_jax", "perceiver_jax.*"]),
  python_requires=">=3.11",
  install_requires=[
    # Pinned: the stack this project is tested on. A newer jax's `tpu` extra pins another libtpu, whose TPU
    # compiler gives other memory figures than the README's (docs/tpu_compile.jsonl) and the tests'.
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "dm-haiku>=0.0.17",
    "optax>=0.2.8",
    "ml-collections>=1.1.0",
    "absl-py>=2.5.1",
    "numpy>=2.0",
    "tensorflow-cpu>=2.21.0",
    "tensorflow-datasets>=4.9.10",
    # tf.summary needs it for the TensorBoard events; tensorflow-cpu does not bring it.
    "tensorboard>=2.20",
    # tensorflow-datasets 4.9.10 imports it to build datasets but does not declare it.
    "importlib_resources>=6.0",
    "jmp>=0.0.4",
    "orbax-checkpoint>=0.12.8",
    "scikit-learn>=1.9",
    "matplotlib>=3.9",
    "pillow>=10",
    # Point clouds: PointNet's ModelNet40 HDF5 files; OFF meshes and seeded area-weighted surface sampling
    # (plain trimesh needs only numpy; none of its extras).
    "h5py>=3.10",
    "trimesh>=4.0",
    # AudioSet clips in any format (scripts/prepare_audioset.py): libsndfile first, FFmpeg for the rest;
    # video (data/video_ops.py): any container and codec FFmpeg reads, decoded to frames.
    "soundfile>=0.13",
    "av>=14",
  ],
  extras_require={
    # Cloud TPU VMs (scripts/setup_tpu_vm.sh); jax[tpu] brings the libtpu it pins (0.0.42.* for jax 0.10.2).
    "tpu": ["jax[tpu]==0.10.2"],
    # libtpu: scripts/compile_tpu.py compiles for a TPU topology with no TPU (tests/test_compile_tpu.py). The
    # same libtpu as jax[tpu]==0.10.2 pins, so that the figures compiled here are the pod's compiler's, and
    # '.[tpu,test]' resolves; scripts/compile_tpu.py refuses another one (--allow_other_libtpu).
    "test": [
      "pytest>=8",
      "pytest-xdist>=3.6",
      "ruff>=0.6",
      "libtpu==0.0.42.*",
      # tests/test_gcs.py: gs:// run paths through epath (gcsfs), tensorstore and TensorFlow against a
      # local GCS emulator; cryptography makes the throwaway CA of TensorFlow's TLS proxy.
      "gcsfs>=2026.10.1",
      "gcp-storage-emulator>=2026.7.19",
      "cryptography>=50",
    ],
  },
)
