"""Transfer: backbone checkpoints in and out (torchvision, Detectron2 and other frameworks' layouts)."""
