"""Specialised guest kernels: tinyconfig plus uniklab's config fragments, built once per
machine from Debian's linux-source package and cached by what decides their bytes."""
