"""Using a trained model (docs/deploy.md): evaluating it, drawing what it does, exporting it
to ONNX and running that file in ONNX Runtime.

- evaluation.py: a model file on its run's test split (what mlit.eval computes);
- summary.py: one summary of a classifier's predictions, for PyTorch and ONNX Runtime alike;
- figures.py: the confusion matrix and the expert shares per class;
- onnx_export.py: a checked ONNX export (opset, dense mixture, parity with PyTorch), int8;
- onnx_runtime.py: an ONNX export read back and run on the CPU;
- timm_models.py: every mLiT in timm's registry, with timm's model interface.
"""
