"""Small-request buffering of a stream, without HTTP."""

from __future__ import annotations

import pytest
import torch

from adapters import InputError, SourceModel, create_adapter, get_frozen_forward
from tests.conftest import image_batch
from tta_server.streams import Stream, step_small_batches


def test_a_bad_small_batch_leaves_the_stream_untouched(tiny_source: SourceModel) -> None:
    stream = Stream("s", create_adapter("tent", tiny_source))
    frozen = get_frozen_forward(tiny_source, "torch")
    step_small_batches(stream, image_batch(3), 4, frozen)
    recent = stream.recent
    with pytest.raises(InputError, match="expected shape"):
        step_small_batches(stream, torch.rand(2, 3, 16, 16), 4, frozen)
    assert stream.recent is recent and len(stream.pending) == 1 and stream.adapter.steps == 0


def test_small_batches_use_the_source_until_context_then_adapt(tiny_source: SourceModel) -> None:
    stream = Stream("s", create_adapter("tent", tiny_source))
    frozen = get_frozen_forward(tiny_source, "torch")
    first = image_batch(2, seed=1)
    torch.testing.assert_close(step_small_batches(stream, first, 4, frozen), frozen(first))
    second = image_batch(2, seed=2)
    context = torch.cat([first, second])
    expected = create_adapter("tent", tiny_source).predict(context)[-2:]
    torch.testing.assert_close(step_small_batches(stream, second, 4, frozen), expected)
    assert stream.adapter.steps == 1 and stream.pending == []  # 4 buffered images: one update
