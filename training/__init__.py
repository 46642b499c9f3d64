"""VisionSelector training (installed as `visionselector_training`)."""
