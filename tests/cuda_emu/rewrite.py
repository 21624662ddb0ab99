#!/usr/bin/env python3
"""Rewrites a .cu file for the emulated CUDA build (tests/cuda_emu/cuda_emu.h):

    KERNEL<<<grid, block, smem, stream>>>(ARGS)
 -> ::smt::emu::LaunchConfig(__FILE__, __LINE__, grid, block, smem, stream)
        .run(::smt::emu::kernel_address(KERNEL), [&] { KERNEL(ARGS); }, ARGS)

(every emulated thread calls KERNEL(ARGS) as written, so template arguments are deduced as nvcc does; the
trailing ARGS let the launch check its pointer arguments; the kernel's address, for its shared-memory
limit, only where smem is given and not 0 -- nullptr otherwise), and

    extern __shared__ T name[];  ->  T* name = reinterpret_cast<T*>(::smt::emu::cta_smem());
    __shared__ T name[N];        ->  auto& name = ::smt::emu::static_shared<T[N], __LINE__>();

A launch spread over several lines becomes one line followed by as many empty lines, and a #line directive
names the original file, so compiler messages and __LINE__ point into the .cu file.
usage: rewrite.py IN.cu OUT.cpp
"""
import re
import sys


def kernel_start(text, end):
    """Start of the kernel expression that ends at `end` (a name, maybe qualified, maybe with <...>)."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if i > 0 and text[i - 1] == ">":
        depth = 0
        while i > 0:
            i -= 1
            if text[i] == ">":
                depth += 1
            elif text[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def closing_paren(text, open_idx):
    depth = 0
    for j in range(open_idx, len(text)):
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return j
    raise SystemExit("rewrite.py: unbalanced parentheses after a kernel launch")


def split_top_level(text):
    """Splits at the commas outside parentheses, brackets and braces."""
    items, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [i.strip() for i in items]


def rewrite(text):
    out, pos = [], 0
    while True:
        lt = text.find("<<<", pos)
        if lt < 0:
            out.append(text[pos:])
            break
        start = kernel_start(text, lt)
        gt = text.find(">>>", lt)
        paren = gt + 3
        while text[paren].isspace():
            paren += 1
        if text[paren] != "(":
            raise SystemExit("rewrite.py: a kernel launch without arguments in parentheses")
        close = closing_paren(text, paren)
        kernel = text[start:lt].strip()
        config = text[lt + 3:gt]
        args = text[paren + 1:close]
        original = text[start:close + 1]
        items = split_top_level(config)
        address = "nullptr"
        if len(items) >= 3 and items[2] != "0":
            address = "::smt::emu::kernel_address(%s)" % kernel
        call = "::smt::emu::LaunchConfig(__FILE__, __LINE__, %s).run(%s, [&] { %s(%s); }%s)" % (
            config, address, kernel, args, (", " + args) if args.strip() else "")
        call = " ".join(call.split())
        out.append(text[pos:start])
        out.append(call + "\n" * original.count("\n"))
        pos = close + 1
    text = "".join(out)
    text = re.sub(r"extern\s+__shared__\s+([A-Za-z_][\w ]*?)\s+(\w+)\[\];",
                  r"\1* \2 = reinterpret_cast<\1*>(::smt::emu::cta_smem());", text)
    return re.sub(r"(?<![\w#])__shared__\s+([A-Za-z_][\w:<> ]*?)\s+(\w+)((?:\[[^\]]+\])*)\s*;",
                  r"auto& \2 = ::smt::emu::static_shared<\1\3, __LINE__>();", text)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        text = f.read()
    with open(dst, "w") as f:
        f.write('#line 1 "%s"\n' % src)
        f.write(rewrite(text))


if __name__ == "__main__":
    main()
