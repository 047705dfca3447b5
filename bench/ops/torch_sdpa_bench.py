#!/usr/bin/env python3
"""PyTorch SDPA (flash and cuDNN backends) forward/backward TFLOP/s, causal, bf16, for the shapes ops_bench
times, with the same FLOP convention (forward 4*B*NH*T^2*HS/2, backward 2.5x forward) and the
same method (3 warm-ups, median of 20 CUDA-event timings). Prints one line per shape."""
import torch
import torch.nn.functional as F

# ops_bench's shapes: 16384 tokens, hidden 2048 -> B = 16384 / T, NH = 2048 / HS (MHA).
SHAPES = [(16384 // T, 2048 // HS, T, HS) for T in (1024, 2048, 4096) for HS in (64, 128)]


def median_ms(fn):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


BACKENDS = [("flash", torch.nn.attention.SDPBackend.FLASH_ATTENTION),
            ("cudnn", torch.nn.attention.SDPBackend.CUDNN_ATTENTION)]

for B, NH, T, HS in SHAPES:
    q, k, v = (torch.randn(B, NH, T, HS, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    do = torch.randn(B, NH, T, HS, device="cuda", dtype=torch.bfloat16)
    flops = 4 * B * NH * T * T * HS / 2
    for name, backend in BACKENDS:
        try:
            with torch.nn.attention.sdpa_kernel(backend):
                fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
                out = fwd()
                f_ms = median_ms(fwd)
                b_ms = median_ms(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
        except RuntimeError as e:
            print(f"torch SDPA {name} B={B} NH={NH} T={T} HS={HS}: not available ({e})".splitlines()[0])
            continue
        print(f"torch SDPA {name} B={B} NH={NH} T={T} HS={HS}: fwd {f_ms:.3f} ms "
              f"{flops / f_ms / 1e9:.1f} TFLOP/s | bwd {b_ms:.3f} ms {2.5 * flops / b_ms / 1e9:.1f} TFLOP/s")
