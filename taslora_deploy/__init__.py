"""taslora_deploy: fold experts, materialise standalone ViTs, export to ONNX/TensorRT, check and benchmark."""

from taslora_deploy.standalone import StandaloneViT, load_standalone, materialize, save_standalone

__all__ = ["StandaloneViT", "load_standalone", "materialize", "save_standalone"]
