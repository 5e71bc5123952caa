"""The reused save/restore buffers: one user at a time, and no use of a view after it is handed back."""
import pytest

from slotserve.kvcache.scratch import BufferInUse, ScratchBuffer


def test_one_lender_at_a_time_and_views_end_with_the_block():
    buf = ScratchBuffer("test")
    with buf.lend(16) as view:
        view[:3] = b"abc"
        with pytest.raises(BufferInUse, match="the test buffer is lent out"):
            with buf.lend(8):
                pass
        with pytest.raises(BufferInUse):
            buf.reserve(1 << 20)  # growing would pull the bytes from under the view
    with pytest.raises(ValueError):
        view[0]  # released: a view kept past its block cannot be read
    with buf.lend(32) as again:  # handed back, so lendable again, and grown
        assert len(again) == 32


def test_reserve_allocates_once():
    buf = ScratchBuffer("test")
    buf.reserve(100)
    with buf.lend(50) as view:
        assert len(view) == 50
    buf.reserve(10)
    with buf.lend(100) as view:
        assert len(view) == 100
