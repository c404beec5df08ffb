/* simd.h: how the core's hot loops get a vector copy for newer x86-64 CPUs.
 *
 * CZ_SIMD_CLONES on a function makes GCC/Clang build it twice on x86-64, for AVX2 and for the
 * baseline, and pick one at load time by what the CPU has. Such functions are written with the
 * compilers' vector extensions, or as plain loops the vectorizer takes (CMakeLists.txt turns it
 * on for image_color.c and image_geom.c); both copies become vector instructions. Sanitizer
 * builds keep one plain copy. None of these targets enables fused multiply-adds, so both copies
 * give the same bits. A 32-byte vector never passes by value between functions: GCC warns and
 * clang refuses (an ABI change without AVX) in the baseline copy; pass a pointer. */
#ifndef CZ_SIMD_H
#define CZ_SIMD_H

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define CZ_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CZ_SIMD_CLONES
#endif

#endif
