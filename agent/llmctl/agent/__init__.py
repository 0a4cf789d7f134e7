"""The llmctl agent: the inference engine, its HTTP server, the benchmark and the host daemon."""

import os

# grpcio >= 1.81 restarts its epoll poller in the child of every fork when fork support is on (the default);
# subprocess closes the child's descriptors before exec, the poller then hits EBADF and the child aborts
# before it runs (grpc/grpc#43055): a replica or an optimizer measurement that dies at birth with SIGABRT.
# llmctl only forks to exec, so it needs no fork support. Set before grpc is first imported in this process
# (every llmctl entry point imports this package early); an operator's own setting wins.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
