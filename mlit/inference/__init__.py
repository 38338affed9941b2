"""Using a trained model (docs/deploy.md): evaluating it, drawing what it does, exporting it
to ONNX and running that file in ONNX Runtime.

- evaluation.py: a model file on its run's test split (what mlit.eval computes);
- summary.py: one summary of a classifier's predictions, for PyTorch and ONNX Runtime alike;
- figures.py: the confusion matrix and the expert shares per class;
- onnx_graph.py: the exported graph, written node by node from a model's weights;
- onnx_chunks.py: that graph run a few images at a time, so its working set stays in cache;
- onnx_export.py: an ONNX export (the two above), int8, kept once it passes its checks;
- onnx_checks.py: those checks: ONNX Runtime against PyTorch, the int8 file against fp32;
- onnx_runtime.py: an ONNX export read back and run on the CPU;
- timm_models.py: every mLiT in timm's registry, with timm's model interface.
"""
