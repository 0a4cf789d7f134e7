"""The optimizer: baseline -> bottleneck -> one technique per step -> measure side by side -> keep or reject."""
