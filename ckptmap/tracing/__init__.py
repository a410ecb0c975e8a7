"""Reading how a model's code uses its parameters by running it: the torch dataflow tracer
(`torch_dataflow`) and its HF front end (`hf_layouts`). MaxText's jaxpr reader runs in the MaxText worker
(ckptmap.maxtext.code_layout)."""
