"""The presets as package data: ``b2t25.yaml``, ``b2t24.yaml``, ``demo.yaml`` (read with ``importlib.resources``
by ``fastdecoder.config.load_config``, so they work from an installed wheel as well as from a checkout)."""
