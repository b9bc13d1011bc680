"""The whole-series judgement (pure) over header records, and its header reader on real files."""

from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from scp.wholeness import SliceHeader, assess, read_header
from tests.support.mr import mr_series

SAG = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # normal along x


def stack(n: int, *, spacing: float = 0.7, skip: tuple[int, ...] = (), echo: float = 6.0,
          echo_number: int | None = None, **extra: object) -> list[SliceHeader]:
    return [SliceHeader(sop_uid=f"{echo}.{i}", position=(i * spacing, -50.0, 50.0),
                        orientation=SAG, matrix=(32, 32), echo_time=echo,
                        echo_number=echo_number, **extra)  # type: ignore[arg-type]
            for i in range(n) if i not in skip]


def test_gap_free_stack_is_whole_without_a_count():
    w = assess(stack(20))
    assert w.whole and not w.count_met and w.expected is None and w.slices == 20


def test_missing_middle_slice_is_not_whole_and_says_where():
    w = assess(stack(20, skip=(10,)))
    assert not w.whole and not w.count_met
    assert "uneven slice spacing" in str(w.reason) and "1.40 mm" in str(w.reason)


def test_images_in_acquisition_met_is_a_count_proof():
    w = assess(stack(20, images_in_acquisition=20, acquisition_number=1))
    assert w.whole and w.count_met and (w.expected, w.basis) == (20, "images_in_acquisition")


def test_missing_last_slice_is_caught_by_the_count_only():
    w = assess(stack(20, skip=(19,), images_in_acquisition=20, acquisition_number=1))
    assert w.whole and not w.count_met  # geometry cannot see it; the count can
    assert "19 of 20 expected" in str(w.reason)


def test_number_of_slices_times_echoes_per_echo_stack():
    both = stack(10, echo=5.0, echo_number=1, number_of_slices=10) + stack(
        10, echo=30.0, echo_number=2, number_of_slices=10)
    w = assess(both)
    assert w.count_met and w.stacks == 2 and w.expected == 20 and w.basis == "number_of_slices"
    partial = both[:-3]  # second echo still arriving
    w = assess(partial)
    assert not w.whole and not w.count_met and "stacks" in str(w.reason)


def test_two_images_at_one_position_and_too_few_slices():
    dup = stack(5) + [stack(5)[2].__class__(**{**stack(5)[2].__dict__, "sop_uid": "x"})]
    assert "two images at one position" in str(assess(dup).reason)
    assert not assess(stack(2)).whole  # two positions prove nothing
    assert not assess([SliceHeader("sr")]).whole  # no geometry at all (e.g. an SR)


def test_enhanced_single_object_with_full_dimension_grid():
    grid = tuple((s, e) for s in range(1, 6) for e in (1, 2))
    one = SliceHeader("mf", frames=10, frame_items=10, dimension_indices=grid)
    assert assess([one]).count_met and assess([one]).basis == "enhanced_frames"
    holey = SliceHeader("mf", frames=10, frame_items=10, dimension_indices=grid[:-1] + ((9, 9),))
    assert not assess([holey]).whole


def test_read_header_from_spooled_files(tmp_path):
    files = mr_series(tmp_path / "s", slices=4, images_in_acquisition=4)
    headers = [read_header(f) for f in files]
    assert headers[1].position == (0.7, -50.0, 50.0) and headers[0].images_in_acquisition == 4
    assert assess(headers).count_met
    ds = pydicom.dcmread(files[0])  # an Enhanced-like multi-frame header
    ds.NumberOfFrames = 2
    frames = []
    for i in (1, 2):
        content = Dataset()
        content.DimensionIndexValues = [i, 1]
        item = Dataset()
        item.FrameContentSequence = Sequence([content])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.save_as(tmp_path / "mf.dcm")
    h = read_header(tmp_path / "mf.dcm")
    assert (h.frames, h.frame_items, h.dimension_indices) == (2, 2, ((1, 1), (2, 1)))
