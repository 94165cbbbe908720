"""Sparse linear models (logistic regression first): workers compute gradients,
servers hold weights and optimizer state.

Training. A worker takes partitions from the scheduler's work queue
(``po.next_task``), reads each in minibatches, localises their keys (sorted
unique keys + local columns), registers the partition's key set with the
servers (its minibatches then go as positions into it), pulls the weights of
those keys, computes the gradient of the mean loss with sparse matrix
products (numpy), and pushes it; the
servers apply it with the table's update handle (SGD with a decaying rate,
AdaGrad, FTRL-Proximal; L1 as a proximal step on the server, L2 in the
gradient, or both inside FTRL). The next minibatch's weights are pulled before
the current gradient is computed (pull ahead), with at most ``max_inflight``
requests outstanding. Updates are asynchronous; block proximal gradient with
bounded delay comes with the consistency issue and would be a fourth handle
plus a task policy, with the same worker loop.

Evaluation. After each ``eval_every`` epochs and at the end, every worker
scores its share of the test rows (a contiguous slice of every test
partition) and pushes partial results to two kv tables, so the servers do the
reduction: ``eval`` (Add) holds per-round sums and margin histograms,
``eval_rows`` (Assign) holds each test row's margin and label when the test
set is small enough for an exact AUC. Worker 0 pulls a round once every
worker has added its count, computes logloss, AUC, accuracy, reports them
(the scheduler's progress line and ``metrics.jsonl`` pick them up), and sends
every round in its final result. Intermediate rounds are asynchronous (each
worker scores when it has moved past the epoch); the last round runs after a
barrier on the final weights.

Outputs in ``[job] output``: ``metrics.jsonl`` (train lines at each progress
line, test lines per evaluation), ``model.h5`` (merged from the servers'
shards; see :mod:`mpips.apps.linear.model`).

``data = "synthetic"`` keeps the built-in planted model of the demo job: rows
are generated on each worker, and the final line also scores the planted model.

Modules: ``app`` (the job's tables, queue, progress line and final merge, on
the scheduler and servers), ``worker`` (the training loop), ``evaluation``
(test rounds reduced on the servers), ``model`` (losses, gradients, metrics,
model files), ``synthetic`` (the demo's planted model), ``tools`` (predict,
inspect, plot, split).
"""

from .app import LinearApp

__all__ = ["LinearApp"]
