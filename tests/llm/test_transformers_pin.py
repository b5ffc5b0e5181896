"""llm/batching.py builds on transformers' cache internals (`Cache(layers=...)` over its own
`DynamicLayer` subclass), which change between minor releases. pyproject.toml pins the releases
they were checked against; these tests say so plainly when an upgrade leaves them, before the
batcher's own tests fail somewhere deep inside a forward pass."""

from __future__ import annotations

import tomllib
from importlib.metadata import version

import torch
from packaging.requirements import Requirement

from llm.batching import SPARE_COLUMNS, _in_place_layer_class
from tests.server import PROJECT_ROOT


def test_the_installed_transformers_is_one_the_pin_allows():
    dependencies = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(Requirement(line) for line in dependencies if Requirement(line).name == "transformers")
    installed = version("transformers")
    assert pin.specifier.contains(installed), (
        f"transformers {installed} is outside the pin {pin}: llm/batching.py subclasses its cache "
        "internals (DynamicLayer, Cache(layers=...)); check them against this release, then move the pin"
    )


def test_a_cache_over_in_place_layers_grows_in_place_as_the_model_calls_it():
    from transformers.cache_utils import Cache

    rows, heads, dim, length = 2, 3, 4, 5
    keys = torch.randn(rows, heads, length + 1, dim)  # one spare column
    values = torch.randn(rows, heads, length + 1, dim)
    layer = _in_place_layer_class()(keys, values, length)
    cache = Cache(layers=[layer])
    assert cache.get_seq_length() == length

    step_keys, step_values = torch.randn(rows, heads, 1, dim), torch.randn(rows, heads, 1, dim)
    seen_keys, seen_values = cache.update(step_keys, step_values, 0)
    assert seen_keys.shape[2] == length + 1 and torch.equal(seen_keys[:, :, -1:], step_keys)
    assert torch.equal(seen_values[:, :, :length], values[:, :, :length])
    assert layer.key_buffer.data_ptr() == keys.data_ptr()  # written in place, not copied
    assert cache.get_seq_length() == length + 1
    kv_length, kv_offset = cache.get_mask_sizes(1, 0)
    assert (kv_length, kv_offset) == (length + 2, 0)

    cache.update(torch.randn(rows, heads, 2, dim), torch.randn(rows, heads, 2, dim), 0)  # past the spare column
    assert cache.get_seq_length() == length + 3 and layer.key_buffer.shape[2] == length + 3 + SPARE_COLUMNS
