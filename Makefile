# kr-mini-llm: `make demo` sets up and runs the main job on the default Korean corpus;
# `make test` sets up and runs the tests; `make install` only sets up what the main job needs,
# `make install-test` adds what the tests need (a browser for the chat page, a Korean font, the
# oracles: transformers, peft, trl, lm-eval, llama.cpp's Python side...).
PYTHON ?= python3
# The torch to install when none is present (any torch >= 2.4 works; see README).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-test demo lora-demo dpo-demo test test-isa-avx2 bench-ops bench-lora clean

install:
	bash scripts/install_system_deps.sh $(SYSTEM_DEPS)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -r requirements-build.txt
	$(PYTHON) -m pip install --no-build-isolation -e ".$(EXTRAS)"

# The same install with the test extras and system packages (one build of the extension, not two).
install-test:
	$(MAKE) install EXTRAS="[test]" SYSTEM_DEPS=--test

# The main job: default corpus -> tokenizer -> token shards -> model_tiny (2,000 steps or 10 min, whichever comes first) -> text.
demo: install
	$(PYTHON) scripts/prepare_data.py
	$(PYTHON) scripts/train_tokenizer.py --input data/processed/train.txt --vocab_size 8000 --output models/tokenizer --overwrite
	$(PYTHON) scripts/prepare_data.py --tokenizer models/tokenizer.model
	$(PYTHON) scripts/train.py --config configs/training_demo.yaml --model_config configs/model_tiny.yaml --overwrite_output_dir
	$(PYTHON) scripts/generate.py --model checkpoints/demo --prompt "대한민국의 수도는" --max_new_tokens 60 --seed 0

# LoRA on the main job's model (run `make demo` first): help-page titles -> their first paragraph.
lora-demo:
	$(PYTHON) scripts/make_sft_demo.py --input data/processed --output data/sft --overwrite
	$(PYTHON) scripts/generate.py --model checkpoints/demo --chat --prompt "$$(printf '$(LORA_DEMO_PROMPT)')" --temperature 0 --max_new_tokens 60
	$(PYTHON) scripts/lora.py --model checkpoints/demo --train --test --data data/sft --iters 300 --batch-size 8 \
		--num-layers -1 --lora-rank 8 --learning-rate 2e-4 --mask-prompt --steps-per-eval 100 --val-batches -1 \
		--test-batches -1 --adapter-path adapters/demo --overwrite-adapters --device cpu
	$(PYTHON) scripts/generate.py --model checkpoints/demo --adapter-path adapters/demo --chat --prompt "$$(printf '$(LORA_DEMO_PROMPT)')" --temperature 0 --max_new_tokens 60
	$(PYTHON) scripts/fuse.py --model checkpoints/demo --adapter-path adapters/demo --save-path models/demo-fused --export-hf --overwrite
LORA_DEMO_PROMPT ?= 다음 도움말 항목을 한 문단으로 설명하세요.\n\n치수 단위 변환

# SFT then DPO on the main job's model (run `make demo` first): full fine-tuning on help-page answers,
# then DPO (LoRA) preferring each page's real first paragraph over a word-shuffled copy; prints the
# reward accuracy on the validation pairs before and after, and two answers before and after.
dpo-demo:
	$(PYTHON) scripts/make_sft_demo.py --input data/processed --output data/sft --overwrite
	$(PYTHON) scripts/make_dpo_demo.py --input data/sft --output data/dpo --overwrite
	$(PYTHON) scripts/lora.py --model checkpoints/demo --train --data data/sft --fine-tune-type full --optimizer adamw \
		--iters 150 --batch-size 8 --learning-rate 1e-4 --mask-prompt --steps-per-eval 50 --val-batches 10 \
		--adapter-path checkpoints/demo-sft --overwrite-adapters --device cpu --no-progress
	for p in "$(DPO_DEMO_PROMPT_1)" "$(DPO_DEMO_PROMPT_2)"; do $(PYTHON) scripts/generate.py --model checkpoints/demo-sft \
		--chat --prompt "$$(printf "$$p")" --temperature 0 --max_new_tokens 50; done
	$(PYTHON) scripts/dpo.py --model checkpoints/demo-sft --train --data data/dpo --fine-tune-type lora --num-layers -1 \
		--lora-rank 8 --iters 100 --batch-size 4 --learning-rate 2e-4 --beta 0.1 --precompute-ref-log-probs \
		--steps-per-eval 50 --val-batches 10 --adapter-path adapters/demo-dpo --overwrite-adapters --device cpu --no-progress
	for p in "$(DPO_DEMO_PROMPT_1)" "$(DPO_DEMO_PROMPT_2)"; do $(PYTHON) scripts/generate.py --model checkpoints/demo-sft \
		--adapter-path adapters/demo-dpo --chat --prompt "$$(printf "$$p")" --temperature 0 --max_new_tokens 50; done
DPO_DEMO_PROMPT_1 ?= 다음 도움말 항목을 한 문단으로 설명하세요.\n\n치수 단위 변환
DPO_DEMO_PROMPT_2 ?= 다음 도움말 항목을 한 문단으로 설명하세요.\n\n텍스트 서식 지정

test: install-test
	$(PYTHON) -m pytest tests

# The op tests again on kernels built for AVX2, with oneDNN/MKL/ATen capped at AVX2 (an AVX2-only
# CPU, emulated on this one): about 4 min of build and 3 of tests on 2 cores, so not in `make test`.
test-isa-avx2: install-test
	$(PYTHON) scripts/run_isa.py avx2 -- $(PYTHON) -m pytest tests/ops

bench-ops: install
	$(PYTHON) scripts/bench_ops.py

bench-lora: install
	$(PYTHON) scripts/bench_lora.py

clean:
	rm -rf build kr_mini_llm/_C*.so *.egg-info
