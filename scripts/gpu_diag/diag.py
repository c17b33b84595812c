"""Each stage of a bare llama.cpp load/decode on the GPU, printed before it runs (argv: path ngl n_ctx variant)."""
import ctypes, faulthandler, sys
faulthandler.enable()
import llama_cpp as L

path, ngl, n_ctx, variant = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
say = lambda s: print(f"diag[{variant}]:", s, flush=True)
if "log" in variant:
    from edgellm.engine import llamacpp
    llamacpp.init()
    say("edgellm log callback set")
L.llama_backend_init()
mp = L.llama_model_default_params()
mp.n_gpu_layers = ngl
if "progress" in variant:
    mp.progress_callback = L.llama_progress_callback(lambda p, u: True)
say("load")
m = L.llama_model_load_from_file(path.encode(), mp)
say(f"loaded {bool(m)}")
cp = L.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, 2048, 512
cp.n_threads = cp.n_threads_batch = 16
cp.swa_full = False
say("context")
c = L.llama_init_from_model(m, cp)
say(f"context {bool(c)}")
toks = (L.llama_token * 8)(*range(100, 108))
say("decode")
say(f"decoded {L.llama_decode(c, L.llama_batch_get_one(toks, 8))}")
say(f"logit0 {L.llama_get_logits_ith(c, -1)[0]}")
L.llama_free(c)
L.llama_model_free(m)
say("ok")
