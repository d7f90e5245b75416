"""One request codec for REST and the Open Inference Protocol: body limits, JSON, tensors, images."""
