# Developer entry points. The real work lives in scripts/, so a developer's
# `make test` and CI's .ci/run do exactly the same thing.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
RUFF := $(ROOT)/.venv/bin/ruff

.PHONY: help run test test-dates bootstrap services-start services-stop lint format clean-run

help: ## Show this list
	@echo "Targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-zA-Z_-]+):.*## /\1\t/' | \
		awk -F'\t' '{ printf "  %-16s %s\n", $$1, $$2 }'
	@echo "Pass pytest arguments with ARGS, e.g.: make test ARGS='-k invoices -x'"

run: ## Start services, migrate, seed demo data, Celery, and the dev server on :8000
	@bash "$(ROOT)/scripts/run.sh"

test: ## The full CI check: pytest, missing migrations, ruff
	@bash "$(ROOT)/scripts/test.sh" $(ARGS)

test-dates: ## The suite at six moved clocks (libfaketime); one instant: make test-dates DATES=2028-02-29T23:40Z
	@bash "$(ROOT)/scripts/test_dates.sh" $(DATES)

bootstrap: ## Install Debian packages and the .venv (fast when nothing changed)
	@bash "$(ROOT)/scripts/bootstrap.sh"

services-start: ## Start the project-local Postgres (:55432) and Redis (:56379)
	@bash "$(ROOT)/scripts/services.sh" start

services-stop: ## Stop the project-local Postgres and Redis
	@bash "$(ROOT)/scripts/services.sh" stop

lint: bootstrap ## ruff check + ruff format --check
	cd "$(ROOT)" && $(RUFF) check .
	cd "$(ROOT)" && $(RUFF) format --check .

format: bootstrap ## ruff format + ruff check --fix
	cd "$(ROOT)" && $(RUFF) format .
	cd "$(ROOT)" && $(RUFF) check --fix .

clean-run: ## Stop services, delete .run/ and the /tmp fallback cluster
	-@bash "$(ROOT)/scripts/services.sh" stop
	@source "$(ROOT)/scripts/env.sh" && rm -rf -- "$(ROOT)/.run" "$$PG_TMP_BASE" && \
		echo "removed $(ROOT)/.run and $$PG_TMP_BASE"
