"""Build one image with mkosi 24.3, incrementally: `python -m imagebuild os|seed|operator-image`.

Outputs (in $OUT):

* ``os``: ``os/`` (OCI layout, tag $OS_VERSION: the prebuilt slot, erofs + dm-verity hash area, its UKI
  carrying the root hash, and systemd-boot; packed by ``osimage.pack`` from the split artifacts of
  mkosi's disk build) and ``os.raw`` (the installed A/B layout, written by ``elemental build-disk``
  from the OCI image, as a machine's install does; OS_RAW=mkosi keeps mkosi's plain disk instead);
* ``seed``: ``seed.efi`` (+ ``seed.vmlinuz``, ``seed.initrd`` for PXE);
* ``operator-image``: ``operator/`` (OCI layout, tag $OS_VERSION).

What it decides, each in a function of its own with a test (tests/test_imagebuild.py):

1. the wheel (all our Python code) is built under a lock, and ``build/dist`` is replaced only when the
   wheel's RECORD (every file with its content hash) changed — the three images build at once and
   an image being built may be reading it (`refresh_wheel`);
2. an image whose inputs (wheel RECORD, image definition, these build scripts, version settings) are
   unchanged since its last build, with its outputs present, is skipped (`inputs_digest`,
   `up_to_date`); FORCE=1 rebuilds;
3. a build that may install packages — no incremental cache yet, or an image definition newer than the
   cache — holds a lock on the package cache for its whole run, because mkosi 24.3 runs apt with
   Debug::NoLocking and two downloads of one .deb could clobber each other (`may_install_packages`).

The os and seed images are signed for Secure Boot (``keys.py``: $ELEMENTAL_SB_KEY/$ELEMENTAL_SB_CERT,
else the project key in $ELEMENTAL_STATE/secureboot, made on first use).

Caches live outside the repo: $ELEMENTAL_CACHE/packages (apt) and $ELEMENTAL_CACHE/mkosi/<profile>
(the tree after the package step; one per profile, since mkosi 24 keys the cache by distribution,
release and architecture only). MKOSI_ARGS adds mkosi options (``-f`` drops the image cache, needed
after editing mkosi.pkgmngr/; ``-ff`` also the package cache).
"""
