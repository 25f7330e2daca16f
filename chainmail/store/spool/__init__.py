"""Durable spool: the embedded default mail queue (see :mod:`.directory` and docs/storage.md).

One job a module: :mod:`.ids` (queue ids), :mod:`.record` (the envelope and the segment
record format), :mod:`.fileio` (writes, syncs and bounded reads), :mod:`.writer` (receiving
a message), :mod:`.segments` (appending to the segment log and its group fdatasync),
:mod:`.index` (reading segments into the index), :mod:`.removal` (removals and segment
deletion), :mod:`.largefiles` (messages stored as files of their own), :mod:`.claims`
(which process handles a message) and :mod:`.directory` (``DirectorySpool``, the facade).
"""

from .claims import ADOPT_AFTER, Claim, message_age
from .directory import DirectorySpool
from .ids import new_id
from .largefiles import DEFAULT_SYNC_THREADS, FORMAT_VERSION
from .record import RECORD_VERSION, Envelope, QueuedMessage, SpoolFormatError
from .segments import PREALLOCATE, SEGMENT_SIZE
from .writer import BUFFER_LIMIT, SpoolUnavailable, SpoolWriter

__all__ = [
    "ADOPT_AFTER", "BUFFER_LIMIT", "DEFAULT_SYNC_THREADS", "FORMAT_VERSION", "PREALLOCATE",
    "RECORD_VERSION", "SEGMENT_SIZE", "Claim", "DirectorySpool", "Envelope", "QueuedMessage",
    "SpoolFormatError", "SpoolUnavailable", "SpoolWriter", "message_age", "new_id",
]
