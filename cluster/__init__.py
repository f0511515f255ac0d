"""Running the stages at scale: the batch run, the in-process and Ray backends, the capture service and the planner."""
