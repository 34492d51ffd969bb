"""Export a diffusers Stable Diffusion *inpainting* pipeline to ONNX for the server.

``python -m export --help``. Modules: ``tiny`` (random-weight pipelines, real CLIP and small
non-CLIP tokenizers), ``components`` (``Dims`` read from the pipeline's configs, I/O contract,
wrappers, sample inputs), ``onnx_export`` (torch.onnx dynamo), ``optimize`` (fp16, CUDA fusions,
external data), ``verify`` (ORT vs PyTorch), ``tokenizer_files`` (the exported tokenizer folder),
``exporter`` (orchestration + manifest). Only this package imports torch; the server reads the
result.
"""
