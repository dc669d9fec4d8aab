# dseek - build and test.
#   make              ./dseek, optimized for this CPU (-march=native)
#   make PORTABLE=1   no -march=native (any x86-64 / other CPU)
#   make NO_OMP=1     without OpenMP
#   make demo         install deps, build, make models/default, run a completion and a chat
#   make test         every test (tests/run_all.sh)
#   make asan-test    every test under AddressSanitizer + UndefinedBehaviorSanitizer
#   make fuzz         every libFuzzer target in tests/fuzz for FUZZ_SECONDS each (clang)
CC      ?= cc
PKGS    := openblas libcjson libpcre2-8
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -lopenblas -lcjson -lpcre2-8)
OPT     ?= -O3
ifeq ($(PORTABLE),1)
ARCH    :=
else
ARCH    := -march=native
endif
ifeq ($(NO_OMP),1)
OMP     := -Wno-unknown-pragmas
else
OMP     := -fopenmp
endif
CFLAGS  ?= $(OPT) $(ARCH)
CFLAGS  += -std=c11 -ffp-contract=off -Wall -Wextra -Iinclude $(OMP) $(PKG_CFLAGS)
LDLIBS  := $(PKG_LIBS) -lm

all: dseek tools/gen_ckpt

dseek: src/main.c src/dseek.c include/dseek.h
	$(CC) $(CFLAGS) -o $@ src/main.c src/dseek.c $(LDLIBS)

tools/gen_ckpt: tools/gen_ckpt.c
	$(CC) -O2 -std=c11 -Wall -Wextra -o $@ $< -lm

test: all
	bash tests/run_all.sh

# The quick start: dependencies, build, the default model, a completion and a chat turn.
demo:
	bash tools/install-deps.sh
	$(MAKE) all
	bash models/make_default.sh
	./dseek run -m models/default -p "The three laws of robotics are" -n 32
	printf 'Hello! Who are you?\n' | ./dseek chat -m models/default -n 32

# Every test under ASan + UBSan (+ LeakSanitizer), including the tokenizer and speculative
# sampling test programs the suites build themselves. allocator_may_return_null: a refused
# huge allocation must reach the engine's own "out of memory" error, as it does without ASan.
# Pass or fail, the sanitized binaries are then replaced by the normal build (build/fuzz,
# with its corpus, is left alone). The speculative-sampling distribution test draws a third
# of its samples here (500: 100 s instead of 290 under the sanitizers): this run is for memory
# errors and UB, and `make test` keeps the full statistical check.
SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined
asan-test:
	rm -f dseek tools/gen_ckpt
	$(MAKE) all OPT="-O1 -g -fno-omit-frame-pointer" CC="$(CC) $(SAN)"
	ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		SANITIZE=1 DSEEK_SPEC_N=500 DSEEK_CC="$(CC) $(SAN) -g" bash tests/run_all.sh; rc=$$?; \
	rm -f dseek tools/gen_ckpt; $(MAKE) all && exit $$rc

# libFuzzer targets (tests/fuzz/fuzz_*.c, public API + src/dseek.c), with ASan and UBSan.
# Built without OpenMP: one thread, deterministic. Fails if any target crashes.
FUZZ_SECONDS ?= 30
FUZZ_CC      ?= clang
FUZZ_TARGETS := safetensors config quant_header tokenizer tokenizer_json chat
FUZZ_CFLAGS  := -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=undefined -std=c11 -Wall -Wextra -Wno-unknown-pragmas -Iinclude $(PKG_CFLAGS)

build/fuzz/%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_util.h src/dseek.c include/dseek.h
	@mkdir -p build/fuzz
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< src/dseek.c $(LDLIBS)

fuzz-build: $(FUZZ_TARGETS:%=build/fuzz/%)

fuzz: fuzz-build
	bash tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -f dseek tools/gen_ckpt
	rm -rf build

.PHONY: all test demo asan-test fuzz fuzz-build clean
