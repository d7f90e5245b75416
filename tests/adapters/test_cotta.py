"""CoTTA against its specification (docs/adapters.md), on a tiny real model."""

from __future__ import annotations

import torch

from adapters import SourceModel, create_adapter
from adapters.methods.cotta import CottaAdapter
from adapters.source_model import state_sha256
from tests.conftest import image_batch


def cotta(source: SourceModel, **config: object) -> CottaAdapter:
    adapter = create_adapter("cotta", source, {"n_augmentations": 4, **config})
    assert isinstance(adapter, CottaAdapter)
    return adapter


def test_gate_off_returns_the_pre_update_teacher_on_clean_input(tiny_source: SourceModel) -> None:
    x = image_batch(16)
    adapter = cotta(tiny_source, gate_threshold=0.0)
    out = adapter.forward_and_adapt(x)
    # Step 1: the teacher is still the source with test-batch statistics, i.e. the norm adapter.
    torch.testing.assert_close(out, create_adapter("norm", tiny_source).forward_and_adapt(x))
    assert adapter.diagnostics()["augmented"] == 0.0


def test_gate_on_averages_augmented_teacher_views(tiny_source: SourceModel) -> None:
    x = image_batch(16)
    adapter = cotta(tiny_source, gate_threshold=1.0)
    out = adapter.forward_and_adapt(x)
    assert adapter.diagnostics()["augmented"] == 1.0
    assert not torch.allclose(out, create_adapter("norm", tiny_source).forward_and_adapt(x), atol=1e-4)
    assert 0.0 < adapter.diagnostics()["anchor_confidence"] < 1.0


def test_restore_p_one_puts_the_student_back_to_the_source(tiny_source: SourceModel) -> None:
    adapter = cotta(tiny_source, restore_p=1.0, gate_threshold=0.0)
    adapter.forward_and_adapt(image_batch(16))
    for student, source in zip(adapter.student_params, adapter.source_params, strict=True):
        assert torch.equal(student, source)


def test_ema_alpha_extremes(tiny_source: SourceModel) -> None:
    frozen_teacher = cotta(tiny_source, ema_alpha=1.0, restore_p=0.0, gate_threshold=0.0)
    copying_teacher = cotta(tiny_source, ema_alpha=0.0, restore_p=0.0, gate_threshold=0.0)
    for adapter in (frozen_teacher, copying_teacher):
        adapter.forward_and_adapt(image_batch(16))
    assert all(
        torch.equal(t, s) for t, s in zip(frozen_teacher.teacher_params, frozen_teacher.source_params, strict=True)
    )
    assert all(
        torch.equal(t, s) for t, s in zip(copying_teacher.teacher_params, copying_teacher.student_params, strict=True)
    )
    assert not all(
        torch.equal(s, o) for s, o in zip(copying_teacher.student_params, copying_teacher.source_params, strict=True)
    )


def test_anchor_is_shared_by_streams_and_frozen(tiny_source: SourceModel) -> None:
    before = state_sha256(tiny_source.module.state_dict())
    a, b = cotta(tiny_source, gate_threshold=1.0), cotta(tiny_source, gate_threshold=1.0)
    a.forward_and_adapt(image_batch(16))
    assert a.anchor is b.anchor
    assert state_sha256(tiny_source.module.state_dict()) == before


def test_state_is_student_teacher_and_adam_moments(tiny_source: SourceModel) -> None:
    adapter = cotta(tiny_source, gate_threshold=0.0)
    adapter.forward_and_adapt(image_batch(16))
    values = sum(p.numel() for p in tiny_source.module.parameters())
    tensors = len(adapter.student_params)
    assert adapter.state_bytes() == 4 * values * 4 + tensors * 4  # student, teacher, exp_avg, exp_avg_sq + steps
