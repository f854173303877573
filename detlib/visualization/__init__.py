"""Pictures: detections and ground truth drawn on images, and the training report's loss curves."""
