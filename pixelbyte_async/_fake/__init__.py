"""
The implementation of `pixelbyte_async.testing`.

Everything here is private; import the public names from `pixelbyte_async.testing`.
"""
