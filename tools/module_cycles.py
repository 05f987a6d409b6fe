#!/usr/bin/env python3
"""Lists cycles in the use-graph of a Rust crate's modules (crate::/super::/self:: paths).

    python3 tools/module_cycles.py crates/diffpost/src   # prints the cycles, then "N cycles"
"""
import os,re,sys
root=sys.argv[1]
files={}
for dp,_,fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            p=os.path.join(dp,f); rel=os.path.relpath(p,root)[:-3]
            parts=rel.split('/')
            if parts[-1] in ('mod','lib','main'): parts=parts[:-1]
            files['::'.join(parts)]=open(p).read()
mods=set(files)
def resolve(cur, path):
    segs=path.split('::')
    if segs[0]=='crate': base=[]; segs=segs[1:]
    elif segs[0]=='super':
        base=cur.split('::')[:-1] if cur else []
        segs=segs[1:]
        while segs and segs[0]=='super': base=base[:-1]; segs=segs[1:]
    elif segs[0]=='self': base=cur.split('::') if cur else []; segs=segs[1:]
    else: return None
    best=None
    for i in range(len(segs)+1):
        m='::'.join(base+segs[:i])
        if m in mods: best=m
    return best
edges={m:set() for m in mods}
for m,src in files.items():
    # strip comments
    src=re.sub(r'//.*','',src)
    for mt in re.finditer(r'\b((?:crate|super|self)(?:::\w+)+)',src):
        t=resolve(m,mt.group(1))
        # also handle use super::{a, b}
        if t and t!=m: edges[m].add(t)
    for mt in re.finditer(r'\b((?:crate|super|self)(?:::\w+)*)::\{([^}]*)\}',src):
        for item in re.split(r'[,\s]+',mt.group(2)):
            item=item.split('::')[0].strip()
            if not item or item=='self': continue
            t=resolve(m,mt.group(1)+'::'+item)
            if t and t!=m: edges[m].add(t)
# ignore edges to a module's own ancestors that are only `mod` declarations? keep all; report cycles
sys.setrecursionlimit(10000)
idx={};low={};st=[];on=set();res=[];c=[0]
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in edges[v]:
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: res.append(comp)
for v in mods:
    if v not in idx: sc(v)
for r in res: print(sorted(r))
print(len(res),"cycles")
