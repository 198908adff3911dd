# The two commands of the README. Everything else is CMake.
BUILD ?= build
JOBS ?= $(shell nproc)

.PHONY: all deps build test run clean sanitize tsan fuzz deb

all: build

deps:
	@scripts/setup-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) -- --no-print-directory

test: build
	@ctest --test-dir $(BUILD) --output-on-failure -j 2

run: build
	@scripts/run-demo.sh $(BUILD)

sanitize: deps
	@cmake -S . -B build-asan -DLORAD_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
	@cmake --build build-asan -j $(JOBS)
	@ctest --test-dir build-asan --output-on-failure -j 2 -LE nosan

tsan: deps
	@cmake -S . -B build-tsan -DLORAD_TSAN=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
	@cmake --build build-tsan -j $(JOBS)
	@ctest --test-dir build-tsan --output-on-failure -L tsan

# every libFuzzer target, about 120 s in all (scripts/run-fuzz.sh shares them out)
fuzz: deps
	@CC=clang cmake -S . -B build-fuzz -DLORAD_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
	@cmake --build build-fuzz -j $(JOBS)
	@scripts/run-fuzz.sh build-fuzz 120

# Debian packages (debian/, debhelper) into $(BUILD)/deb: lorad, liblorad2,
# liblorad-dev, python3-lorad
deb: deps
	@JOBS=$(JOBS) scripts/build-deb.sh $(BUILD)/deb

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz
