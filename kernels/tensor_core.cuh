// tensor_core.cuh — warp-level tensor-core multiply-accumulate (PTX mma.sync) and the operand conversions
// the tensor-core conv kernels (igemm_tc.cuh's body: conv1d_igemm_tc.cu, conv2d_igemm_tc.cu, conv3d_igemm_tc.cu)
// need.
//
// Inline PTX rather than <mma.h>'s wmma: our kernels take no CUDA toolkit headers (see common.cuh), and the
// PTX ISA documents which lane holds which element of each mma fragment (wmma's layouts are opaque), so a
// kernel can build its fragments straight from its own shared-memory layout.
//
//   mma_m16n8k8_tf32(d, a, b):  d += A * B, A 16x8, B 8x8, TF32 inputs, float32 accumulation (sm_80+).
//   mma_m16n8k16_f16(d, a, b):  d += A * B, A 16x16, B 16x8, float16 inputs, float32 accumulation (sm_80+).
//   to_tf32(f):                 cvt.rna.tf32.f32: f rounded to TF32 (10 mantissa bits, nearest, ties away
//                               from zero), as the bit pattern the tf32 mma takes.
//   tf32_operand_bits(f):       f's bits as a tf32 mma operand that the mma reads as cvt.rna.tf32.f32(f)
//                               (half a tf32 ulp added, the low 13 bits left for the tensor core to drop):
//                               two instructions per element instead of cvt.rna's three.
//   half_bits(h):               a float16's 16 bits (the f16 mma's operands are pairs of them).
//   pack_halves(lo, hi):        two float16 bit patterns as one f16x2 operand word (one PRMT).
//   opaque_int(v):              v, held: how it was computed hidden from ptxas (as opaque_pointer), so that
//                               it is kept in a register rather than re-derived where it is used.
//   opaque_pointer(p):          p, with how it was computed hidden from ptxas (an empty asm; a no-op under
//                               the emulator): keeps a gather's per-element addresses at one instruction.
// Fragments, per lane (groupID gid = lane / 4, tig = lane % 4; D is 16x8 for both shapes):
//   tf32: a = A[gid][tig], A[gid+8][tig], A[gid][tig+4], A[gid+8][tig+4]; b = B[tig][gid], B[tig+4][gid]
//   f16:  a = A[gid][2tig..+1], A[gid+8][2tig..+1], A[gid][2tig+8..+9], A[gid+8][2tig+8..+9] (pairs packed);
//         b = B[2tig..+1][gid], B[2tig+8..+9][gid]
//   d = D[gid][2tig], D[gid][2tig+1], D[gid+8][2tig], D[gid+8][2tig+1]
// Every lane of the warp must execute each mma (it is warp-collective); the kernel calls them in
// block-uniform control flow.
//
// Below sm_80 the mma and cvt bodies are __trap(): the host declines devices below compute capability 8.0
// (gpuconv/_cuda/conv_igemm_tc.py), and the NVRTC compile check still builds every instantiation for sm_75.
// Under the CPU emulator (GPUCONV_EMULATED) the emulator's gpuconv_emu_* functions stand in
// (tests/emulator/cuda_compat.h); there the mma is block-collective (it meets the block at barriers).
#pragma once

#include "common.cuh"

namespace gpuconv {

#if defined(GPUCONV_EMULATED)

__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    gpuconv_emu_mma_m16n8k8_tf32(d, a, b);
}
__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    gpuconv_emu_mma_m16n8k16_f16(d, a, b);
}
__device__ __forceinline__ unsigned to_tf32(float f) { return gpuconv_emu_cvt_rna_tf32(f); }
__device__ __forceinline__ unsigned short half_bits(half h) {
    unsigned short bits;
    __builtin_memcpy(&bits, &h, sizeof bits);
    return bits;
}

#else

__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}

__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}

__device__ __forceinline__ unsigned to_tf32(float f) {
    unsigned u = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(u) : "f"(f));
#else
    (void)f;
    __trap();
#endif
    return u;
}

__device__ __forceinline__ unsigned short half_bits(half h) { return h.bits; }

#endif

// The bits a tf32 mma operand should hold for f so that the mma reads cvt.rna.tf32.f32(f), in two
// instructions instead of cvt.rna's three (ptxas expands cvt.rna.tf32.f32 on sm_80 / sm_90 to a finiteness
// test, an add of half a tf32 ulp and a mask of the low 13 bits): the tensor core reads only the top 19
// bits of a .tf32 operand (sign, exponent, 10 mantissa bits; CUTLASS's round_half_ulp_truncate relies on
// the same), so the mask is left to it. For finite f, f's bits + 0x1000 truncated to 19 bits is exactly
// cvt.rna's result (carries into the exponent included, up to inf past the largest tf32); inf and NaN
// are passed unchanged, which the mma reads as cvt.rna's code reads them after its mask (a NaN whose
// payload lies only in the low 13 bits reads as inf in both). The emulator's mma models the truncation
// (tests/emulator/cuda_compat.h, tf32_operand).
__device__ __forceinline__ unsigned tf32_operand_bits(float f) {
    const unsigned u = __float_as_uint(f);
    return fabsf(f) < __int_as_float(0x7F800000) ? u + 0x1000u : u;
}

// Two float16 bit patterns (in the low halves of 32-bit registers) as one f16x2 mma operand word, lo in
// the low half: bytes 1, 0 of lo and 1, 0 of hi (selector 0x5410), one PRMT instead of a shift and an OR.
// (The emulator provides __byte_perm: tests/emulator/cuda_compat.h.)
__device__ __forceinline__ unsigned pack_halves(unsigned lo, unsigned hi) { return __byte_perm(lo, hi, 0x5410); }

// Hides how an int was computed from the compiler (as opaque_pointer), so that it is held, not re-derived.
__device__ __forceinline__ void opaque_int(int& v) {
#if !defined(GPUCONV_EMULATED) && defined(__CUDA_ARCH__)
    asm volatile("" : "+r"(v));
#endif
}

// Hides how pointer p was computed from the compiler (an empty asm that "changes" it; no instruction). The
// tensor-core kernel's gather forms one pointer per slice and steps it by a channel stride per element:
// without this, ptxas folded the pointer's own 32-bit terms into every element's address and rebuilt each
// one from 64-bit sums and shifts (up to 4 instructions per element instead of 1).
template <typename T> __device__ __forceinline__ const T* opaque_pointer(const T* p) {
#if !defined(GPUCONV_EMULATED) && defined(__CUDA_ARCH__)
    asm volatile("" : "+l"(p));
#endif
    return p;
}

}  // namespace gpuconv
