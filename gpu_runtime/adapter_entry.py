"""One adapter version's entry in a node's adapter store: where its copies are (State), the copy in host RAM, and
the typed refusals of the store's moves. gpu_runtime.adapter_store owns every transition."""

from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum

from . import object_io
from .adapter_validation import AdapterRejected


class State(StrEnum):
    """Where an adapter version is, by its nearest copy to the device (each state holds the copies below it,
    except where a tier change dropped one)."""

    OBJECT = "object"  # object storage only
    LOADING = "loading"  # the loader thread is fetching, validating or reading it
    DISK = "disk"  # node-local disk
    HOST = "host"  # host RAM, validated and ready to copy
    DEVICE = "device"  # a device slot
    FAILED = "failed"  # refused: it fails fast until a new version (or forget_failure)


class NoFreeSlot(RuntimeError):
    """Every fitting slot holds a pinned or in-use adapter; the request waits for the next step."""


@dataclass
class HostAdapter:
    key: str
    facts: object
    weights: dict
    nbytes: int


@dataclass
class Adapter:
    """One adapter version's lifecycle on this node: the copies it has and who holds it. Only the store's
    transitions (``AdapterStore._to_*`` / ``_off_*``) change the copies."""

    key: str  # contract.version_key
    tier: str | None = None  # the tier asked for: the first request's ref, then set_tier
    pinned: bool = False  # hot: its device slot is never evicted
    disk_bytes: int | None = None  # on node-local disk
    host: HostAdapter | None = None  # in host RAM
    slot: int | None = None  # in this device slot
    loading: Future | None = None  # the loader thread's work towards host RAM
    failed: AdapterRejected | None = None
    in_use: int = 0  # running rows holding its slot
    uses: int = 0  # activations: the access frequency F of Algorithm 4

    @property
    def state(self):
        if self.failed is not None:
            return State.FAILED
        if self.slot is not None:
            return State.DEVICE
        if self.host is not None:
            return State.HOST
        if self.disk_bytes is not None:
            return State.DISK
        return State.LOADING if self.loading is not None else State.OBJECT


def adapter_key(ref):
    """The store's key of an adapter version: the contract's version key."""
    return ref.key


def fetch_adapter(uri, dest):
    """Copies an adapter version's files from object storage (gpu_runtime.object_io) to ``dest``; a missing
    folder or an unknown scheme is the adapter's typed refusal."""
    try:
        object_io.fetch_folder(uri, dest)
    except object_io.ObjectNotFound:
        raise AdapterRejected("adapter_not_found", f"no adapter files at {uri}") from None
    except object_io.UnsupportedStorage as exc:
        raise AdapterRejected("unsupported_storage", str(exc)) from None
