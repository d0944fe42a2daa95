"""The remote-code files an export of a non-GPT-2 architecture ships (copied verbatim, never imported here).

`configuration_baseforge.py` and `modeling_baseforge.py` depend only on torch and transformers, so a
user loads the exported folder with `trust_remote_code=True` and no baseforge installed.
"""
