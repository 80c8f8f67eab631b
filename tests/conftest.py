"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels can only run under its CPU interpreter here; Triton reads the switch once, when first imported
    # (torch.compile imports it too), so it is set before any test module runs
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pladis


@pytest.fixture(scope="module")
def eager_one_thread():
    """The eager PLADIS kernel (no torch.compile warm-up; the maths are tested elsewhere) on one CPU thread.

    One thread is as fast for these tiny models and keeps the tests quick on a busy machine, where
    oversubscribed torch threads slow them several times over.
    """
    backend, threads = pladis.get_backend(), torch.get_num_threads()
    pladis.set_backend("eager")
    torch.set_num_threads(1)
    yield
    pladis.set_backend(backend)
    torch.set_num_threads(threads)
