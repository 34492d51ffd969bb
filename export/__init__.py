"""Export a diffusers Stable Diffusion *inpainting* pipeline to ONNX for the server.

``python -m export --help``. Modules: ``tiny`` (random-weight pipelines + real CLIP tokenizer),
``components`` (I/O contract, wrappers, sample inputs), ``onnx_export`` (torch.onnx dynamo),
``optimize`` (fp16, CUDA fusions, external data), ``verify`` (ORT vs PyTorch), ``exporter``
(orchestration + manifest). Only this package imports torch; the server reads the result.
"""
