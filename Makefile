.PHONY: demo-images

# The berth-demo/* images the Docker host backend, its tests and `make demo` use, built offline
# from Debian packages with `docker import`. Cached by tag: FORCE=1 make demo-images rebuilds.
demo-images:
	tests/images/build.sh
