#!/usr/bin/env python3
"""Host transcription of the index logic of src/shardlm/ops/cuda/sorted_scatter_add.cu (as of
66769b2): which block sums which segment of the sorted keys, which partial rows the chunk kernel
writes and the long-segment kernel reads. Checks, on random sorted key sets with segment lengths
around the chunk length L, that every kept key is summed exactly once in the order the header
documents (rows in order up to L rows; else L-row chunks, then the chunk sums in order).

It checks the control flow only (no CUDA semantics, no arithmetic): run it after changing the
kernels' walks or conditions, and keep it in step with them. Used when no GPU was available to
run the kernel's GPU tests (bench/RESULTS.md, 2026-12-07).

  python3 tools/checks/sorted_scatter_add_order.py
"""
import random
L=256
def simulate(keys, N, skip):
    # keys sorted; returns {key: [row positions of each summed part, in summation order]}
    tiles=(N+L-1)//L
    def seg_start(q,key):
        cnt=sum(1 for j in range(L) if q-j>=0 and keys[q-j]==key)
        if cnt<L: return q+1-cnt
        lo,hi=0,q+1-L
        while lo<hi:
            mid=(lo+hi)//2
            if keys[mid]<key: lo=mid+1
            else: hi=mid
        return lo
    def is_long(i,key): return i+L<N and keys[i+L]==key
    partials={}  # chunk_sum_kernel: tile t -> the L positions it sums
    for t in range(tiles):
        q=t*L; key=keys[q]
        if key==skip: break
        s=seg_start(q,key)
        if not is_long(s,key): continue
        chunk=s+(q-s)//L*L
        if chunk+L>N or keys[chunk+L-1]!=key: continue
        assert t not in partials
        partials[t]=list(range(chunk,chunk+L))
    out={}
    # short_segment_sum_kernel: walks positions; warp ballots over the next L keys
    for i in range(N):
        key=keys[i]
        if key==skip: break
        if i>0 and keys[i-1]==key: continue
        end=-1
        j=i+1
        while j<=i+L:
            found=None
            for lane in range(32):
                k=j+lane
                if k>=N or keys[k]!=key: found=k; break
            if found is not None: end=found; break
            j+=32
        if end<0: continue
        assert key not in out
        out[key]=[list(range(i,end))]
    # long_segment_sum_kernel: walks tiles; the tile of a long segment's first multiple of L
    for t in range(tiles):
        q=t*L; key=keys[q]
        if key==skip: break
        s=seg_start(q,key)
        if not is_long(s,key): continue
        if q-s>=L: continue
        lo,hi=s+L+1,N
        while lo<hi:
            mid=(lo+hi)//2
            if keys[mid]==key: lo=mid+1
            else: hi=mid
        end=lo
        full=(end-s)//L; rest=s+full*L
        parts=[partials[t+k] for k in range(full)]
        if rest<end: parts.append(list(range(rest,end)))
        assert key not in out
        out[key]=parts
    return out
def expected(keys,N,skip):  # the header's documented order
    exp={}
    i=0
    while i<N:
        key=keys[i]; j=i
        while j<N and keys[j]==key: j+=1
        if key!=skip:
            k=j-i
            if k<=L: exp[key]=[list(range(i,j))]
            else: exp[key]=[list(range(i+c,min(i+c+L,j))) for c in range(0,k,L)]
        i=j
    return exp
random.seed(1)
cases=0
for trial in range(400):
    R=random.choice([3,10,97,1000])
    N=random.choice([1,5,255,256,257,511,512,513,1000,2048,3000])
    heavy=[(random.randrange(R+2), random.choice([L-1,L,L+1,2*L,2*L+1,3*L+37,N])) for _ in range(random.randrange(4))]
    toks=[random.randrange(R+3) for _ in range(N)]
    pos=0
    for tok,cnt in heavy:
        for _ in range(cnt):
            if pos<N: toks[pos]=tok; pos+=1
    random.shuffle(toks)
    skip=R
    keys=sorted(t if t<R else R for t in toks)
    assert simulate(keys,N,skip)==expected(keys,N,skip), (R,N,heavy)
    cases+=1
print("ok", cases)
