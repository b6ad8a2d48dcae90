"""models.device: the CPU thread setting (parameter, else $NTK_THREADS, else the default) and
the Compute options object."""
import dataclasses
import os

import pytest
import torch

from models.device import (DEFAULT_MEMORY_BUDGET, THREADS_ENV, Compute, default_threads,
                           limited_threads, resolve_threads)

CORES = os.cpu_count() or 1
USABLE = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else CORES


@pytest.mark.parametrize("load, expected", [(0.0, USABLE), (0.4, USABLE),
                                            (0.6, max(1, USABLE - 1)), (USABLE - 1.0, 1),
                                            (USABLE + 3.0, 1)])
def test_default_is_the_idle_cores(monkeypatch, load, expected):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert default_threads() == expected


def test_parameter_then_environment_then_default(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert resolve_threads() == USABLE
    monkeypatch.setenv(THREADS_ENV, " 1 ")
    assert resolve_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "1000")
    assert resolve_threads() == CORES  # never more than the cores
    assert resolve_threads(1) == 1  # the parameter wins over the environment
    monkeypatch.setenv(THREADS_ENV, "")
    assert resolve_threads() == USABLE


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "two", "2.0"])
def test_bad_thread_counts_are_refused_naming_the_source(monkeypatch, value):
    with pytest.raises(ValueError, match=r"^threads must be a whole number"):
        resolve_threads(value)
    monkeypatch.setenv(THREADS_ENV, str(value))
    with pytest.raises(ValueError, match=r"^\$NTK_THREADS must be a whole number"):
        resolve_threads()


def test_limited_threads_sets_and_restores(monkeypatch):
    previous = torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "1")
    with limited_threads():
        assert torch.get_num_threads() == 1
    with limited_threads(CORES):
        assert torch.get_num_threads() == CORES
    assert torch.get_num_threads() == previous


def test_compute_resolves_to_concrete_values():
    c = Compute(device="cpu", dtype="float32", memory_budget="1GB", threads=1).resolve()
    assert (c.device, c.dtype, c.memory_budget, c.threads) == (torch.device("cpu"), torch.float32,
                                                              2**30, 1)
    assert c.resolve() == c                                        # idempotent
    plain = Compute("cpu").resolve()
    assert plain.dtype == torch.float64 and plain.budget == DEFAULT_MEMORY_BUDGET
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.threads = 2
    assert dataclasses.replace(c, dtype=None).resolve().dtype == torch.float64


@pytest.mark.parametrize("field, value, message", [
    ("device", "gpu", "device must be"), ("dtype", "int8", "dtype must be"),
    ("memory_budget", "lots", "cannot read memory size"), ("memory_budget", -1, "positive"),
    ("threads", 0, "threads must be a whole number")])
def test_compute_refuses_bad_values_naming_them(field, value, message):
    with pytest.raises(ValueError, match=message):
        Compute(**{field: value})
