# HIS Mesh: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BUF_VERSION := 1.75.0
BUF    := .tools/node_modules/.bin/buf
PROTOS := $(shell find protos -name '*.proto' | sort)
GEN_DIRS := $(patsubst protos/%,services/%,$(sort $(dir $(PROTOS))))
# The TypeScript client and the patient web app (npm package; exact versions in its lock file).
WEB      := clients/web
WEB_DEPS := $(WEB)/node_modules/.installed
WEB_SRC  := $(shell find $(WEB)/src $(WEB)/app $(WEB)/test -path $(WEB)/app/dist -prune -o -type f -print) \
            $(WEB)/vite.config.ts $(WEB)/tsconfig.json

.PHONY: help install run test lint fmt proto proto-check gen-into web-gen-into web web-test buf-lint buf-breaking mesh-check gateway-check istio-schema cnpg-schema pytest bench profile clean

help: ## Show the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

$(BUF):
	@command -v npm >/dev/null || { echo "npm is needed to install buf (apt-get install -y npm)"; exit 1; }
	npm install --silent --no-save --no-package-lock --prefix .tools @bufbuild/buf@$(BUF_VERSION)

$(WEB_DEPS): $(WEB)/package.json $(WEB)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed for the web client (apt-get install -y npm)"; exit 1; }
	@node -e 'const [a, b] = process.versions.node.split(".").map(Number); if (a < 20 || (a === 20 && b < 19)) { console.error(`Node $${process.version} is too old for clients/web: it needs 20.19 or newer`); process.exit(1); }'
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(WEB)/app/dist/index.html: $(WEB_DEPS) $(WEB_SRC)
	cd $(WEB) && npm run --silent build

web: $(WEB)/app/dist/index.html ## Type-check and build the patient web app into clients/web/app/dist (his up serves it).

web-test: $(WEB_DEPS) ## Type check, prettier and the Node unit tests of clients/web (its gateway and browser tests run in pytest).
	cd $(WEB) && npm run --silent lint && npm run --silent test:unit

install: $(VENV)/.installed $(BUF) $(WEB_DEPS) web ## Create the virtualenv and install everything, build the web app.

run: $(VENV)/.installed web ## Start the whole hospital locally on embedded PostgreSQL, with demo data.
	$(VENV)/bin/his up --demo

test: install buf-lint buf-breaking lint proto-check mesh-check gateway-check web-test pytest ## Everything CI runs.

# Generated code: services/his/<domain>/v1/*_pb2.py, *_pb2_grpc.py and their .pyi stubs.
gen-into: # internal: generate every stub into $(OUT)
	@mkdir -p $(OUT)
	@PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=$(OUT) --grpc_python_out=$(OUT) --mypy_out=quiet:$(OUT) --mypy_grpc_out=quiet:$(OUT) $(PROTOS)
	@for dir in $(GEN_DIRS); do touch $(OUT)/$${dir#services/}__init__.py; done

# Generated TypeScript: $(WEB)/src/gen/his/<domain>/v1/*_pb.ts (protobuf-es v2, see $(WEB)/buf.gen.yaml)
# and google/rpc/error_details_pb.ts, the error details the servers attach, from the same
# error_details.proto as the Python side's googleapis-common-protos (pinned in pyproject.toml).
web-gen-into: # internal: generate the TypeScript client code into $(OUT)/src/gen
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; mkdir -p $$tmp/google/rpc; \
	cp "$$($(PY) -c 'import pathlib, google.rpc.error_details_pb2 as m; print(pathlib.Path(m.__file__).parent)')/error_details.proto" $$tmp/google/rpc/; \
	$(BUF) generate --template $(WEB)/buf.gen.yaml -o $(OUT); \
	$(BUF) generate $$tmp --template $(WEB)/buf.gen.yaml -o $(OUT)

proto: $(VENV)/.installed $(BUF) $(WEB_DEPS) ## Regenerate the Python stubs and the TypeScript client code from protos/ (never edit them by hand).
	rm -f $(addsuffix *_pb2*.py*,$(GEN_DIRS))
	$(MAKE) --no-print-directory gen-into OUT=services
	rm -rf $(WEB)/src/gen
	$(MAKE) --no-print-directory web-gen-into OUT=$(WEB)
	@echo "generated Python stubs and TypeScript code for $(words $(PROTOS)) proto files"

proto-check: $(VENV)/.installed $(BUF) $(WEB_DEPS) ## Fail when the committed Python stubs or TypeScript code differ from what the protos generate.
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(MAKE) --no-print-directory gen-into OUT=$$tmp || exit 1; \
	$(MAKE) --no-print-directory web-gen-into OUT=$$tmp/web || exit 1; \
	stale=0; for dir in $(GEN_DIRS); do \
	  rel=$${dir#services/}; \
	  diff -r -q -x __pycache__ $$tmp/$$rel $$dir || stale=1; \
	done; \
	diff -r -q $$tmp/web/src/gen $(WEB)/src/gen || stale=1; \
	if [ $$stale = 1 ]; then echo "Generated code is stale: run 'make proto' and commit."; exit 1; fi; \
	echo "generated Python stubs and TypeScript code match protos/"

buf-lint: $(BUF) ## buf lint on protos/.
	$(BUF) lint

# Breaking-change check against the protos as last landed. CI runs on a clean clone of main, so
# "main" is HEAD itself and comparing with it can never fail. The baseline is, in this order:
#   BUF_AGAINST=<commit>      what CI knows main was before this push (e.g. the push's "before" sha);
#   on main (HEAD is main):   HEAD's first parent, the previous main: a landing is one merge
#                             commit (`git merge` of the branch), so its first parent is what was
#                             landed before and the comparison covers the whole change set;
#   on a branch:              the merge-base with main (what the branch changes).
# A baseline commit that is missing (a shallow clone) fails: a check that skips cannot catch anything.
# Only a baseline without protos/ (the first landing) is skipped.
buf-breaking: $(BUF) ## buf breaking against the previously landed protos (BUF_AGAINST=<commit> to choose).
	@set -e; \
	if [ -n "$(BUF_AGAINST)" ]; then base="$(BUF_AGAINST)"; \
	elif ! git rev-parse -q --verify main >/dev/null || [ "$$(git rev-parse HEAD)" = "$$(git rev-parse main)" ]; then base=HEAD^1; \
	else base=$$(git merge-base HEAD main); fi; \
	git rev-parse -q --verify "$$base^{commit}" >/dev/null || { echo "buf breaking: baseline $$base is not in this clone (shallow? git fetch --deepen=1)"; exit 1; }; \
	if ! git cat-file -e "$$base:protos" 2>/dev/null; then echo "buf breaking: $$base has no protos yet, nothing to compare"; exit 0; fi; \
	tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	git archive "$$base" buf.yaml protos | tar -x -C $$tmp; \
	$(BUF) breaking --against $$tmp; \
	echo "buf breaking: no breaking change against $$base ($$(git rev-parse --short "$$base"))"

lint: $(VENV)/.installed ## ruff and mypy on hand-written code.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy services clients tests bench

fmt: $(VENV)/.installed $(WEB_DEPS) ## Format and autofix (Python, and clients/web with prettier).
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	cd $(WEB) && npm run --silent format

gateway-check: $(VENV)/.installed ## The local gateway's Envoy config, generated from mesh/istio/gateway, validated by envoy.
	$(VENV)/bin/his gateway config --check

mesh-check: $(VENV)/.installed ## Render every overlay, validate strictly and lint the Istio policy (his mesh check).
	$(VENV)/bin/his mesh check

# The Istio schema the check carries, from Istio's CRD file (istio/api
# kubernetes/customresourcedefinitions.gen.yaml at tag RELEASE); see services/his/mesh/crds/NOTICE.
istio-schema: $(VENV)/.installed ## Regenerate the carried Istio schema: make istio-schema SRC=<crds.gen.yaml> RELEASE=1.28.0
	@test -n "$(SRC)" -a -n "$(RELEASE)" || { echo "usage: make istio-schema SRC=<Istio CRD file> RELEASE=<its tag, e.g. 1.28.0>"; exit 2; }
	$(PY) -m his.mesh.istio_crds "$(SRC)" --release "$(RELEASE)"

# The CloudNativePG Cluster CRD the check carries, from the operator's
# config/crd/bases/postgresql.cnpg.io_clusters.yaml at tag v$(RELEASE), commit $(COMMIT).
cnpg-schema: $(VENV)/.installed ## Regenerate the carried CloudNativePG CRD: make cnpg-schema SRC=<clusters.yaml> RELEASE=1.30.0 COMMIT=<sha>
	@test -n "$(SRC)" -a -n "$(RELEASE)" -a -n "$(COMMIT)" || { echo "usage: make cnpg-schema SRC=<CNPG Cluster CRD file> RELEASE=<its tag, e.g. 1.30.0> COMMIT=<the tag's commit>"; exit 2; }
	$(PY) -m his.mesh.cnpg_crd "$(SRC)" --release "$(RELEASE)" --commit "$(COMMIT)"

# Two workers (PYTEST_WORKERS=0 for one process), each with its own PostgreSQL and servers, tests
# handed out one by one except an xdist_group's, which one worker runs in order (the billing
# journey); then the end-to-end tests, which run `his up` on the fixed local ports, alone: beside
# a busy worker their ports were found taken (the cause not pinned down), and alone they never were.
PYTEST_WORKERS ?= 2
pytest: $(VENV)/.installed
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup --ignore=tests/e2e
	$(VENV)/bin/pytest tests/e2e

# Every figure is printed also as a ratio to a bare grpc.aio echo server measured in the same run,
# alternating (bench/echo.py, bench/harness.py): the figures of a shared machine move, the ratios less.
bench: $(VENV)/.installed ## Load benchmarks, each also as a ratio to a bare echo server: patient rpcs, booking, the rush, emr reads and notes, orders, lab-result queries, dispensing, payments, security, h2load, start-up; audit outage and VerifyChain cost.
	$(PY) -m bench.patient_load --concurrency 1 --calls 1000 --seed 500
	$(PY) -m bench.patient_load --concurrency 32 --calls 4000 --seed 2000
	$(PY) -m bench.scheduling_load --bookings 2000 --concurrency 32 --rush 1000
	$(PY) -m bench.emr_load --calls 2000 --concurrency 16 --seed 50
	$(PY) -m bench.orders_load --calls 800 --seed 20
	$(PY) -m bench.lab_load --calls 1000 --concurrency 8 --seed 30
	$(PY) -m bench.pharmacy_load --calls 2000 --concurrency 16 --seed 50
	$(PY) -m bench.pharmacy_load --calls 2000 --concurrency 16 --seed 51 --hot
	$(PY) -m bench.billing_load --calls 2000 --concurrency 16 --seed 50
	$(PY) -m bench.security_cost --calls 2000 --seed 200
	@command -v h2load >/dev/null || { echo "h2load is needed: apt-get install -y nghttp2-client"; exit 1; }
	$(PY) -m bench.grpc_h2load --calls-c1 500 --calls 4000
	$(PY) -m bench.startup --service patient --runs 5
	$(PY) -m bench.audit_outage --pause 30
	$(PY) -m bench.verify_cost --events 100000 --calls 1000 --rounds 3

profile: $(VENV)/.installed ## py-spy on patient, scheduling and audit under load; prints the grouped top costs (root: ptrace).
	@command -v h2load >/dev/null || { echo "h2load is needed: apt-get install -y nghttp2-client"; exit 1; }
	$(PY) -m bench.profile --seconds 15

clean: ## Remove the virtualenv and tools (keeps .his/, the local database).
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache $(WEB)/node_modules $(WEB)/app/dist

# --- Alerts and dashboards (deploy/kustomize/components/observability) --------------------------
# The SLO rules and Alertmanager routes are tested with Debian's promtool and amtool by pytest
# (tests/observability/); the dashboards are generated from his/observability/dashboards.py.
.PHONY: dashboards dashboards-check
DASHBOARDS_DIR := deploy/kustomize/components/observability/dashboards

dashboards: $(VENV)/.installed ## Regenerate the Grafana dashboards (one per service) from code.
	$(PY) -m his.observability.dashboards --out $(DASHBOARDS_DIR)

dashboards-check: $(VENV)/.installed ## Fail when the committed dashboards differ from what the code builds.
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(PY) -m his.observability.dashboards --out $$tmp 2>/dev/null || exit 1; \
	if ! diff -r -q $$tmp $(DASHBOARDS_DIR); then echo "Dashboards are stale: run 'make dashboards' and commit."; exit 1; fi; \
	echo "dashboards match his/observability/dashboards.py"

test: dashboards-check
