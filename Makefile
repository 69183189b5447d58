SHELL := /bin/bash
export PATH := $(CURDIR)/.tools/node/bin:$(CURDIR)/node_modules/.bin:$(PATH)
NODE := $(CURDIR)/.tools/node/bin/node
DATA_DIR ?= $(CURDIR)/.paddock

.PHONY: setup build base-image demo test lint typecheck unit

setup:
	@bash scripts/setup.sh

build: setup
	@$(NODE) packages/runner/build.ts
	@$(NODE) packages/ui/build.ts

base-image: build
	@bin/paddock images build-base --data-dir $(DATA_DIR)

demo: base-image
	@bash scripts/demo.sh

lint: setup
	@biome check .

typecheck: setup
	@tsc -p tsconfig.json
	@tsc -p packages/ui/tsconfig.json

test: base-image lint typecheck
	@PADDOCK_TEST_DATA=$(DATA_DIR) $(NODE) --test --test-concurrency=1 --test-timeout=600000 \
		'packages/**/*.test.ts' 'apps/**/*.test.ts' 'bench/**/*.test.ts'
