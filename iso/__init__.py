"""Packs the live seed (UKI), the OS OCI image and a registration file into a hybrid ISO and PXE files.

``python -m iso.pack`` (``make repack``) runs in seconds: it never rebuilds a rootfs, it only
rearranges mkosi's outputs in ``$OUT``.
"""
