"""absl programs over the cl_zoo library."""
