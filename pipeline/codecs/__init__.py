"""Wire formats of tailsift's topics. Only the pipeline encodes and decodes; operators see dicts."""
