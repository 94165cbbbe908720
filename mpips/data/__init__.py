"""Reading converted data sets inside jobs.

- :mod:`mpips.data.format`: the partition format and checksums;
- :func:`load_manifest`: a data set's partitions and totals;
- :class:`PartitionReader`: minibatches (labels + CSR with uint64 keys) in chunks;
- :func:`localise`: minibatch keys -> sorted unique keys + local columns;
- :class:`PartitionQueue`: hands partitions to workers, per epoch, exactly once.

The ``[data]`` job file section is declared here.
"""

from mpips.config import Option, non_negative, positive, section
from mpips.data.localise import localise
from mpips.data.manifest import Manifest, ManifestError, PartitionInfo, load_manifest
from mpips.data.queue import PartitionQueue, QueueError, Task
from mpips.data.reader import Minibatch, PartitionError, PartitionReader, read_minibatches

section("data", {
    "train": Option(str, "", "folder of a converted training set (holds manifest.json), "
                    "or its URL (s3://bucket/path...; pip install 'mpips[s3]')"),
    "test": Option(str, "", "folder or URL of a converted test set; empty: no test pass"),
    "minibatch": Option(int, 1000, "rows per minibatch", positive),
    "chunk_rows": Option(int, 65536, "rows read from a partition at a time (memory bound)",
                         positive),
    "epochs": Option(int, 1, "passes over the training partitions", positive),
    "verify": Option(str, "none", "'sha256': before a worker first reads a training "
                     "partition, check it against the manifest's SHA-256 (a full read); "
                     "'none': rely on HDF5's per-chunk checksums",
                     choices=("none", "sha256")),
    "shuffle": Option(bool, True, "shuffle the partition order every epoch (seeded by "
                      "job.seed)"),
    "prefetch": Option(int, 1, "partitions a worker may hold beyond the one it reads",
                       non_negative),
})

__all__ = ["Manifest", "ManifestError", "Minibatch", "PartitionError", "PartitionInfo",
           "PartitionQueue", "PartitionReader", "QueueError", "Task", "load_manifest",
           "localise", "read_minibatches"]
