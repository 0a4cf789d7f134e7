"""The control plane's gRPC edge: servicers for AgentService and AdminService, their interceptors, and
the proto <-> domain conversion they share."""
