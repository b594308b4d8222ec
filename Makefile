# The two set-up commands of README.md live here: `make demo` and `make test`.
# Both work on a fresh Debian 12 machine as root (they install what they need).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
APT_PACKAGES = qemu-system-x86 linux-image-amd64 redis-server redis-tools musl-tools \
               lz4 cpio kmod iproute2 dnsmasq-base procps python3-venv python3-pip \
               apache2 nginx memcached media-types apache2-utils dnsmasq-utils \
               openssh-server openssh-client \
               linux-source-6.1 bc bison flex libelf-dev build-essential xz-utils \
               erofs-utils dpkg-dev socat zstd \
               git libxen-dev genisoimage \
               libvirt-daemon-system libvirt-clients libvirt-dev pkg-config libxml2-utils

.PHONY: deps venv demo test lint unit e2e bench clean

deps:
	@if [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	else echo "not root: skipping apt-get (needs: $(APT_PACKAGES))"; fi
	# The apps run inside the guests; the host's own services only get in the way (the
	# bench starts its native copies by hand, on free ports).
	-systemctl disable --now redis-server apache2 nginx memcached ssh >/dev/null 2>&1 || true
	-for s in redis-server apache2 nginx memcached ssh; do service $$s stop >/dev/null 2>&1; done; true

venv: $(BIN)/uniklab
$(BIN)/uniklab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: deps venv
	$(BIN)/uniklab demo

lint: venv
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -m "not e2e"

e2e: venv
	$(BIN)/pytest -m e2e

test: deps venv lint
	$(BIN)/pytest

bench: deps venv
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/bench_small.py
	$(BIN)/python bench/bench_redis.py
	$(BIN)/python bench/bench_network.py
	$(BIN)/python bench/bench_apps.py
	$(BIN)/python bench/bench_pytest.py
	$(BIN)/python bench/bench_soak.py

clean:
	rm -rf $(VENV) build *.egg-info
