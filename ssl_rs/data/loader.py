"""DataLoaders whose workers hand image batches over through preallocated shared memory.

Why: a DataLoader worker sends a batch to the main process through shared memory, and torch makes
a new segment for every batch: the worker creates it (``shm_open``, ``ftruncate`` and a
``posix_fallocate`` that zero-fills all of it), writes it page fault by page fault, pickles its
file descriptor through a socket, and the main process maps it and faults the pages in again.
For a batch of 256 x 12 x 120 x 120 uint16 (88 MB) making the segment alone costs ~40 ms and
writing it ~40 ms more on the development machine, more than reading the 256 images from HDF5
(~20 ms), so a worker delivered ~0.2x of what the same process reads in-process.

What :func:`make_loader` does instead, for a plain :class:`GeoDataset` (no ``transforms``) read
by worker processes with the default collate: a :class:`BatchRing` of ``slots`` batch buffers is
made once in shared memory, before the workers start (they inherit it, or receive it once when
started by spawn/forkserver). A worker claims a free slot, reads the batch's images straight
into it (the same sorted, one-chunk-per-sample reads as in-process), and sends the batch dict
with only ``(slot, shape)`` for the image plus the small per-sample columns by value. The main
process rebuilds the very same dict (same keys in the same order, same dtypes and shapes; the
image a (B, C, H, W) uint16 view of the slot) when it unpickles it, in its main thread or the
pin-memory thread. No segment, descriptor or mapping is made per batch, and after the first
use of a slot no page is faulted in again.

When a slot is reused: the main process's view of a slot is a numpy array wrapped by
``torch.from_numpy``; torch keeps that array alive as long as any tensor sharing the image's
storage lives (views, slices, ``.numpy()``, a Lightning step holding the batch, the pin-memory
thread until its pinned copy is made). Only when the last one is gone is the slot marked free,
so a batch is never overwritten while anything can still read it. Holding more batches than the
ring has slots (``list(loader)``) is correct too: a worker that finds no free slot makes that
batch the standard way (counted in :attr:`BatchRing.overflows`, logged once per worker). A slot
claimed by a worker that then died (an iterator dropped before its batches were received) is
taken back once that process is gone.

What keeps torch's standard hand-over, explicitly (:func:`ring_refusal` says why, logged at
INFO): 0 workers (no hand-over at all), the pair wrappers (:mod:`ssl_rs.data.pairs`: a batch of
items plus partners), a dataset with ``transforms=`` or a custom ``collate_fn`` (their batches
are not the dataset's batch dict), and a batch sampler without a ``batch_size``. Sharded folders
and band subsets use the ring like single files.

The ring holds ``num_workers * prefetch_factor + HELD_BATCHES`` batches of shared memory,
committed when the loader is made (torch's shared memory is allocated up front).

``make_loader(..., resumable=True)`` (pretraining's training loader) gives a
:class:`ResumableLoader`, whose place in its epoch is kept in checkpoints, so that a run resumed
mid-epoch trains the batches the uninterrupted run would have.
"""

from __future__ import annotations

import itertools
import logging
import os
import uuid
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.multiprocessing as torch_mp
from torch.utils.data import DataLoader, default_collate, get_worker_info

from ..errors import ConfigError
from .columns import IMAGES
from .dataset import GeoDataset, batch_rows
from .samplers import process_shard

log = logging.getLogger(__name__)

#: batches the consumer may hold besides those in flight: the one being trained on, the one
#: Lightning's data fetcher holds ahead, and the one the pin-memory thread is copying
HELD_BATCHES = 3
FREE = 0

# the rings of this process, by id: a received batch names its ring
_RINGS: "weakref.WeakValueDictionary[str, BatchRing]" = weakref.WeakValueDictionary()


class _Claim:
    """A worker's claim on a slot; ``sent`` once the batch has been pickled for the main process."""

    __slots__ = ("slot", "pid", "sent")

    def __init__(self, slot: int, pid: int):
        self.slot, self.pid, self.sent = slot, pid, False


class BatchRing:
    """``slots`` uint16 batch buffers of ``capacity`` elements each, in shared memory, with their
    owners: 0 free, a worker's pid while it fills or sends the slot, minus the main process's pid
    while a received batch lives there. Every change of owner happens under one lock.

    Args:
        slots: batch buffers (``num_workers * prefetch_factor + HELD_BATCHES`` for a DataLoader).
        capacity: uint16 elements of one buffer (batch size x C x H x W).
        context: the DataLoader's multiprocessing context (or its name), whose lock the workers share.
    """

    def __init__(self, slots: int, capacity: int, context: Any = None):
        if slots < 1 or capacity < 1:
            raise ConfigError(f"batch ring: need at least one slot of one element, got {slots} x {capacity}")
        if context is None or isinstance(context, str):
            context = torch_mp.get_context(context)
        self.slots, self.capacity = int(slots), int(capacity)
        try:
            self.data = torch.empty(self.slots * self.capacity, dtype=torch.uint16).share_memory_()
        except RuntimeError as e:  # /dev/shm too small (a container's default is 64 MB): one line, exit 2
            raise ConfigError(f"data.num_workers: the batch ring needs {self.slots} x {2 * self.capacity / 1e6:.1f} MB "
                              f"of shared memory, which cannot be allocated ({str(e).splitlines()[0]}); use fewer "
                              "workers, a smaller batch, or a larger /dev/shm (docker run --shm-size)") from None
        self.owner = torch.zeros(self.slots, dtype=torch.int64).share_memory_()
        self.overflow_count = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.lock = context.Lock()
        self.id = uuid.uuid4().hex
        self._views: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._warned = False
        _RINGS[self.id] = self

    def __getstate__(self) -> Dict[str, Any]:  # to a spawned worker: the shared tensors and the lock
        state = self.__dict__.copy()
        state["_views"] = None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        _RINGS.setdefault(self.id, self)

    @property
    def overflows(self) -> int:
        """Batches made the standard way because every slot was held."""
        return int(self.overflow_count[0])

    def busy(self) -> int:
        """Slots not free."""
        return int((self.owner != FREE).sum())

    def _arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        if self._views is None:
            self._views = (self.data.numpy().reshape(self.slots, self.capacity), self.owner.numpy())
        return self._views

    # -- in a worker ----------------------------------------------------------------------
    def claim(self, shape: Tuple[int, ...]) -> Optional[Tuple[_Claim, torch.Tensor]]:
        """A free slot as a ``shape`` uint16 tensor for this worker to fill, or None (counted)
        when the batch does not fit or every slot is held."""
        n = int(np.prod(shape))
        slots, owners = self._arrays()
        me = os.getpid()
        slot = None
        if n <= self.capacity:
            with self.lock:
                free = np.flatnonzero(owners == FREE)
                if len(free) == 0:
                    free = [s for s in np.flatnonzero(owners != FREE).tolist()
                            if abs(int(owners[s])) != me and not _alive(abs(int(owners[s])))]
                if len(free):
                    slot = int(free[0])
                    owners[slot] = me
        if slot is None:
            with self.lock:
                self.overflow_count[0] += 1
            if not self._warned:
                self._warned = True
                log.warning("batch ring: %s; this worker makes such batches the standard way (slower)",
                            f"a batch of {n} elements exceeds a slot of {self.capacity}" if n > self.capacity
                            else f"all {self.slots} slots are held (the consumer keeps more batches than "
                                 f"{HELD_BATCHES} besides those in flight)")
            return None
        claim = _Claim(slot, me)
        view = slots[slot, :n].reshape(shape)
        weakref.finalize(view, self._drop_unsent, claim)
        return claim, torch.from_numpy(view)

    def _drop_unsent(self, claim: _Claim) -> None:
        """The worker's batch is gone: free its slot unless it went to the main process."""
        if not claim.sent:
            self._set_free(claim.slot, claim.pid)

    def _set_free(self, slot: int, holder: int) -> None:
        owners = self._arrays()[1]
        with self.lock:
            if owners[slot] == holder:
                owners[slot] = FREE

    # -- in the main process --------------------------------------------------------------
    def receive(self, slot: int, pid: int, shape: Tuple[int, ...]) -> torch.Tensor:
        """The image of a batch a worker filled: a view of its slot, which is freed when the
        last tensor sharing that view's storage is gone."""
        slots, owners = self._arrays()
        me = -os.getpid()
        with self.lock:
            if owners[slot] != pid:
                raise RuntimeError(f"batch ring: slot {slot} should hold a batch from worker {pid}, but its owner "
                                   f"is {int(owners[slot])} (a batch received twice, or from another process?)")
            owners[slot] = me
        view = slots[slot, :int(np.prod(shape))].reshape(shape)
        weakref.finalize(view, self._set_free, slot, me)
        return torch.from_numpy(view)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process
        return True
    return True


class _RingBatch(dict):
    """A worker's batch dict whose image lies in a ring slot: pickled as (slot, shape) plus the
    other values by value, and rebuilt as a plain dict in the main process."""

    def __init__(self, items: Mapping[str, Any], ring: BatchRing, claim: _Claim):
        super().__init__(items)
        self.ring, self.claim = ring, claim

    def copy(self) -> "_RingBatch":
        return _RingBatch(self, self.ring, self.claim)

    def __reduce_ex__(self, protocol):
        image = self[IMAGES.sample_key]
        self.claim.sent = True
        items = [(k, "image", None) if k == IMAGES.sample_key else
                 (k, "tensor", v.numpy()) if torch.is_tensor(v) else (k, "value", v) for k, v in self.items()]
        return _rebuild_batch, (self.ring.id, self.claim.slot, self.claim.pid, tuple(image.shape), items)


def _rebuild_batch(ring_id: str, slot: int, pid: int, shape: Tuple[int, ...], items: List[tuple]) -> Dict[str, Any]:
    ring = _RINGS.get(ring_id)
    if ring is None:
        raise RuntimeError(f"batch ring {ring_id}: a batch of a ring this process does not have (a ring batch "
                           "unpickled outside the DataLoader that made it)")
    out: Dict[str, Any] = {}
    for key, kind, value in items:
        out[key] = ring.receive(slot, pid, shape) if kind == "image" else (
            torch.from_numpy(value) if kind == "tensor" else value)
    return out


class RingGeoDataset(GeoDataset):
    """A :class:`GeoDataset` (the same samples, bands and keys: a copy of its state) whose batches
    read in DataLoader workers go through ``ring``; in-process reads are the dataset's own."""

    def __init__(self, dataset: GeoDataset, ring: BatchRing):  # no GeoDataset.__init__: its state is copied
        self.__dict__.update(dataset.__getstate__())
        self.ring = ring

    def __getitems__(self, positions: Sequence[int]) -> List[Mapping]:
        if self.transforms is not None or get_worker_info() is None:
            return super().__getitems__(positions)
        claimed = self.ring.claim((len(positions), len(self.bands)) + tuple(self.size))
        if claimed is None:
            return super().__getitems__(positions)
        claim, images = claimed
        self._images(positions, out=images)
        batch = self.batch(positions, images=images, shared=False)
        return batch_rows(_RingBatch(batch, self.ring, claim))


def ring_refusal(dataset: Any, loader_kwargs: Mapping[str, Any]) -> Optional[str]:
    """Why :func:`make_loader` leaves these DataLoader arguments on torch's standard hand-over
    (None: it uses a ring)."""
    if not loader_kwargs.get("num_workers"):
        return "no worker processes"
    if type(dataset) is not GeoDataset:
        return f"a {type(dataset).__name__}, not a plain GeoDataset"
    if dataset.transforms is not None:
        return "transforms= make items, not the dataset's batch"
    if loader_kwargs.get("collate_fn") not in (None, default_collate):
        return "a custom collate_fn"
    if _batch_size(loader_kwargs) is None:
        return "a batch sampler without a batch_size"
    return None


def _batch_size(loader_kwargs: Mapping[str, Any]) -> Optional[int]:
    sampler = loader_kwargs.get("batch_sampler")
    if sampler is not None:
        size = getattr(sampler, "batch_size", None)
        return int(size) if size else None
    size = loader_kwargs.get("batch_size", 1)
    return int(size) if size else None


def make_loader(dataset: Any, *, ring: bool = True, resumable: bool = False, **loader_kwargs: Any) -> DataLoader:
    """A standard ``torch.utils.data.DataLoader(dataset, **loader_kwargs)``; with worker processes
    and a plain :class:`GeoDataset` (see :func:`ring_refusal`), over a :class:`RingGeoDataset` copy
    of it whose batches travel through a :class:`BatchRing` (``ring=False``: never). ``resumable``:
    a :class:`ResumableLoader` (a training loader whose position a checkpoint keeps)."""
    reason = "ring=False" if not ring else ring_refusal(dataset, loader_kwargs)
    if reason is None:
        prefetch = loader_kwargs.get("prefetch_factor") or 2
        per_sample = len(dataset.bands) * int(np.prod(dataset.size))
        batch_ring = BatchRing(loader_kwargs["num_workers"] * prefetch + HELD_BATCHES,
                               _batch_size(loader_kwargs) * per_sample, loader_kwargs.get("multiprocessing_context"))
        dataset = RingGeoDataset(dataset, batch_ring)
        log.info("DataLoader of %s: batches through a ring of %d shared buffers of %.1f MB", dataset.path,
                 batch_ring.slots, 2 * batch_ring.capacity / 1e6)
    elif loader_kwargs.get("num_workers"):
        log.info("DataLoader of %s: torch's standard hand-over (%s)", getattr(dataset, "path", dataset), reason)
    return (ResumableLoader if resumable else DataLoader)(dataset, **loader_kwargs)


class ResumableLoader(DataLoader):
    """A training DataLoader whose place in its epoch is part of a Lightning checkpoint (the
    ``state_dict`` / ``load_state_dict`` that Lightning saves and restores for a stateful loader),
    so that a run interrupted mid-epoch and resumed goes on with exactly the batches the
    uninterrupted run would have trained next.

    The place is counted where a batch leaves the loader for the training loop (the main
    process's ``next``), not where workers read: the batches workers had prefetched into their
    queues or the shared-memory ring when the run stopped were never trained, and are drawn again.
    (Lightning's fetcher takes no batch ahead of the step from a loader with a length.)

    A restored place is applied when the next iteration starts, if that iteration is of the same
    epoch and the loader has the same shape (batches per epoch, batch size, samples, processes);
    otherwise one warning says that the epoch restarts its data order. The batches already trained
    are skipped where indices are drawn: their indices are drawn and dropped (every sampler's
    random stream then stands where the uninterrupted run had it) and none of their samples is read.

    An iteration starts at the first ``next``, not at ``iter``: on a resume Lightning calls
    ``iter`` before it sets the samplers' epoch, and with workers torch draws the first indices
    at ``iter`` (they came from the sampler's previous epoch).

    Under DDP every process trains the same number of batches, so the place the checkpoint keeps
    (global rank 0's) holds for every process: each skips that many batches of its own shard. When
    Lightning rebuilds the loader to inject its ``DistributedSampler`` (from its public attributes,
    before any state is loaded), it builds this class again.

    Lightning saves :meth:`state_dict` in every checkpoint; :func:`ssl_rs.trainer.training_data_position`
    makes sure the place is given back on a resume (Lightning itself may not).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._restored: Optional[Dict[str, Any]] = None  # a checkpoint's place, for the next iteration
        self._place: Optional[Dict[str, Any]] = None  # {"epoch", "batches"} of the latest iteration
        self._skipping: Optional[_SkipBatches] = None

    @property
    def _index_sampler(self):  # what torch's iterators draw indices from (and DataLoader.__len__ counts)
        drawn = DataLoader._index_sampler.fget(self)
        skipping = getattr(self, "_skipping", None)
        if skipping is None or skipping.drawn is not drawn:
            skipping = self._skipping = _SkipBatches(drawn)
        return skipping

    def __iter__(self) -> "_CountedIteration":
        return _CountedIteration(self)

    @property
    def restored(self) -> bool:
        """Whether a place was loaded (:meth:`load_state_dict`) and is still to be applied."""
        return self._restored is not None

    def state_dict(self) -> Dict[str, Any]:
        """The place of the latest iteration, ``{"epoch", "batches"}`` (batches of that epoch
        handed to the training loop, those skipped on a resume included), and the loader's shape."""
        if self._restored is not None:  # loaded and not yet applied: still the place
            return dict(self._restored)
        place = self._place or {"epoch": _sampler_epoch(self), "batches": 0}
        return {**place, **self._shape()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Start the next iteration where ``state`` (a :meth:`state_dict`) left its epoch."""
        batches = state.get("batches") if isinstance(state, Mapping) else None
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
            raise ConfigError(f"--resume: the checkpoint's training data position {state!r} is not "
                              "{'epoch': ..., 'batches': <count>} (a damaged checkpoint?)")
        self._restored = dict(state)

    def _shape(self) -> Dict[str, Any]:
        batch_size = self.batch_size if self.batch_size is not None else getattr(self.batch_sampler, "batch_size", None)
        return {"num_batches": len(self), "batch_size": batch_size, "samples": _length(self.dataset),
                "world_size": _world_size(self)}

    def _start(self, place: Dict[str, Any]) -> Any:
        """torch's iterator for a new iteration, from the restored place if it applies; ``place``
        becomes the loader's."""
        place["epoch"] = _sampler_epoch(self)
        place["batches"] = self._skip(place["epoch"])
        self._index_sampler.skip = place["batches"]
        self._place = place
        return DataLoader.__iter__(self)

    def _skip(self, epoch: Optional[int]) -> int:
        """Batches of ``epoch`` to skip: the restored place's, if it is of this epoch and loader."""
        restored, self._restored = self._restored, None
        if restored is None or restored["batches"] == 0:
            return 0
        shape = self._shape()
        if restored["batches"] >= shape["num_batches"] and restored.get("epoch") != epoch:
            return 0  # the checkpoint's epoch was complete; this is the next one
        changed = [f"{key} {restored.get(key)} -> {value}" for key, value in
                   [("epoch", epoch), *shape.items()] if restored.get(key) != value]
        if not changed:
            return restored["batches"]
        if process_shard()[1] == 0:
            log.warning("resuming mid-epoch: the training data changed since the checkpoint (%s), so this epoch "
                        "restarts its data order: samples of its first %d batches may be trained twice, others not "
                        "at all", ", ".join(changed), restored["batches"])
        return 0


class _CountedIteration:
    """One iteration of a :class:`ResumableLoader`: starts torch's iterator at the first ``next``
    and counts the batches it hands over."""

    def __init__(self, loader: ResumableLoader):
        self._loader = loader
        self._batches: Optional[Any] = None
        self._place: Dict[str, Any] = {"epoch": None, "batches": 0}

    def __iter__(self) -> "_CountedIteration":
        return self

    def __next__(self) -> Any:
        if self._batches is None:
            self._batches = self._loader._start(self._place)
        batch = next(self._batches)
        self._place["batches"] += 1
        return batch


class _SkipBatches:
    """A loader's index sampler whose next iteration drops its first ``skip`` index batches
    (drawn, so that random streams advance, but never handed to the dataset)."""

    def __init__(self, drawn: Any):
        self.drawn, self.skip = drawn, 0

    def __iter__(self):
        # taken at the first draw, not at iter(): with workers, torch calls iter() twice for one
        # iteration and draws from the second only
        skip, self.skip = self.skip, 0
        yield from itertools.islice(self.drawn, skip, None)

    def __len__(self) -> int:
        return len(self.drawn)


def _samplers(loader: DataLoader) -> List[Any]:
    """The loader's sampler objects (batch sampler, its sampler, the sampler), each once."""
    found: List[Any] = []
    for sampler in (loader.batch_sampler, getattr(loader.batch_sampler, "sampler", None), loader.sampler):
        if sampler is not None and all(sampler is not f for f in found):
            found.append(sampler)
    return found


def _sampler_epoch(loader: DataLoader) -> Optional[int]:
    """The epoch the loader's samplers were last set to (None: no sampler keeps one)."""
    for sampler in _samplers(loader):
        epoch = getattr(sampler, "epoch", None)
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            return epoch
    return None


def _world_size(loader: DataLoader) -> int:
    """The processes the loader's samplers split the data among (ours' ``shard()``, a
    ``DistributedSampler``'s ``num_replicas``), else those of ``torch.distributed``."""
    for sampler in _samplers(loader):
        shard = getattr(sampler, "shard", None)
        if callable(shard):
            return int(shard()[0])
        replicas = getattr(sampler, "num_replicas", None)
        if isinstance(replicas, int):
            return replicas
    return process_shard()[0]


def _length(dataset: Any) -> Optional[int]:
    try:
        return len(dataset)
    except TypeError:
        return None
