// kr-llama-greedy: token ids in, llama.cpp's greedy continuation out, as token ids.
//
//   kr-llama-greedy MODEL.gguf N_PREDICT ID [ID ...]
//
// Prints the N_PREDICT greedy token ids (space-separated, one line; it does not stop at EOS, the
// caller cuts where it wants). With N_PREDICT 0, prints instead the argmax after every given id
// (teacher forcing: one forward pass over the ids). The KV cache is f32, flash attention is off
// and weights are not repacked, so an f32 GGUF is compared with our Generator at f32 all the way.
// Built by scripts/build_llama_cpp.sh against the libllama it builds; tests/export's oracle.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

static void quiet(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf N_PREDICT ID [ID ...]\n", argv[0]);
        return 2;
    }
    const int n_predict = atoi(argv[2]);
    std::vector<llama_token> prompt;
    for (int i = 3; i < argc; ++i) prompt.push_back((llama_token) atoi(argv[i]));

    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    // No repacked weight layouts (llama-cli's --no-repack): on the AMX Xeon this was written on,
    // ggml's AMX kernels, which a native build picks for q8_0 by default, crash (SIGSEGV/SIGILL).
    mp.use_extra_bufts = false;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "error: cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) (prompt.size() + n_predict);
    cp.n_ubatch = (uint32_t) prompt.size();
    cp.n_batch = (uint32_t) prompt.size();
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "error: cannot create a context\n");
        return 1;
    }
    if (n_predict == 0) {   // argmax after every prompt position
        const int n = (int) prompt.size();
        const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
        llama_batch all = llama_batch_init(n, 0, 1);
        for (int i = 0; i < n; ++i) {
            all.token[i] = prompt[i];
            all.pos[i] = i;
            all.n_seq_id[i] = 1;
            all.seq_id[i][0] = 0;
            all.logits[i] = true;
        }
        all.n_tokens = n;
        if (llama_decode(ctx, all) != 0) {
            fprintf(stderr, "error: llama_decode failed\n");
            return 1;
        }
        for (int i = 0; i < n; ++i) {
            const float * row = llama_get_logits_ith(ctx, i);
            int best = 0;
            for (int v = 1; v < n_vocab; ++v) if (row[v] > row[best]) best = v;
            printf(i ? " %d" : "%d", best);
        }
        printf("\n");
        llama_batch_free(all);
        llama_free(ctx);
        llama_model_free(model);
        return 0;
    }
    llama_sampler * greedy = llama_sampler_init_greedy();

    llama_batch batch = llama_batch_get_one(prompt.data(), (int32_t) prompt.size());
    llama_token next = 0;
    for (int i = 0; i < n_predict; ++i) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "error: llama_decode failed at step %d\n", i);
            return 1;
        }
        next = llama_sampler_sample(greedy, ctx, -1);
        printf(i ? " %d" : "%d", next);
        batch = llama_batch_get_one(&next, 1);
    }
    printf("\n");

    llama_sampler_free(greedy);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
