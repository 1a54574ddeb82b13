"""The GPU planner's model server: Triton Inference Server and its model repository."""
