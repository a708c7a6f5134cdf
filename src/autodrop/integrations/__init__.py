"""Framework integrations, each importing its framework lazily.

``autodrop.integrations.lightning`` (``pip install 'autodrop[lightning]'``) and
``autodrop.integrations.transformers`` (``pip install 'autodrop[transformers]'``).
Importing ``autodrop`` never imports either framework.
"""
