# The GEMM floor of one TinyLlama decode step with torch (cuBLASLt), bf16.
import torch, time
D, KV, F, V, L = 2048, 256, 5632, 32000, 22
shapes = [(D, D), (KV, D), (KV, D), (D, D), (F, D), (F, D), (D, F)]
ws = [[torch.randn(n, k, device='cuda', dtype=torch.bfloat16) for n, k in shapes] for _ in range(L)]
head = torch.randn(V, D, device='cuda', dtype=torch.bfloat16)
for m in (1, 32):
    xs = {k: torch.randn(m, k, device='cuda', dtype=torch.bfloat16) for k in (D, F)}
    def step():
        for l in range(L):
            for (n, k), w in zip(shapes, ws[l]):
                torch.nn.functional.linear(xs[k], w)
        torch.nn.functional.linear(xs[D], head)
    step(); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    for mode in ('eager', 'graph'):
        t = time.perf_counter()
        for _ in range(50):
            step() if mode == 'eager' else g.replay()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / 50
        print(f'm={m} {mode}: {dt*1e3:.3f} ms per step of GEMMs, {2.07e9/dt/1e12:.2f} TB/s')
    # fp32 activations as lorad keeps them: x cast each time
    xf = {k: torch.randn(m, k, device='cuda', dtype=torch.float32) for k in (D, F)}
    def step32():
        for l in range(L):
            for (n, k), w in zip(shapes, ws[l]):
                torch.nn.functional.linear(xf[k].to(torch.bfloat16), w).float()
    step32(); torch.cuda.synchronize()
    g2 = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g2):
        step32()
    t = time.perf_counter()
    for _ in range(50):
        g2.replay()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / 50
    print(f'm={m} graph, fp32 in/out with casts: {dt*1e3:.3f} ms')
