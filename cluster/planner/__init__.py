"""`spinal plan`: replicas, device maps, store size, capture time and analysis cost from a model config alone."""
